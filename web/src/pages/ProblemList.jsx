import { useState } from "react";
import { postJson } from "../api.js";
import { formatTime } from "../format.js";
import Badge from "./Badge.jsx";

// Outbox rows that wait for someone (deliveries or alerts): dead-lettered (re-send one) or
// overdue. `noun` and `plural` name them ("delivery", "deliveries": the data-* attributes, the
// heading and the API path); `lead` are the columns before State, `extra` those after it, each
// a title and the props of its cell (className, data-*, children) for a row.
export default function ProblemList({ noun, plural, rows, onResent, empty, lead, extra = [], canResend }) {
  const [message, setMessage] = useState("");
  const resend = (id) =>
    postJson(`/api/${plural}/${id}/resend`)
      .then((body) => {
        setMessage(body.message);
        onResent();
      })
      .catch((e) => setMessage(e.message));
  const columns = [
    ...lead,
    { title: "State", cell: (r) => ({ className: "px-3 py-2", children: <Badge value={r.overdue ? "overdue" : r.state} /> }) },
    ...extra,
    { title: "Reason", cell: (r) => ({ className: "px-3 py-2", "data-reason": true, children: r.reason }) },
    { title: "Queued", cell: (r) => ({ className: "whitespace-nowrap px-3 py-2 tabular-nums", "data-time": true, children: formatTime(r.created_at) }) },
    {
      title: "Study",
      cell: (r) => ({
        className: "px-3 py-2",
        children: r.study_uid && (
          <a className="text-blue-800 underline" href={`#/study/${encodeURIComponent(r.study_uid)}`}>
            Open<span className="sr-only"> study {r.study_uid}</span>
          </a>
        ),
      }),
    },
  ];
  return (
    <div {...{ [`data-${noun}-problems`]: true }}>
      <h3 className="mb-2 text-lg font-semibold">
        Dead-lettered and overdue {plural} ({rows.length})
      </h3>
      {rows.length === 0 ? (
        <p className="text-sm text-slate-700">{empty}</p>
      ) : (
        <div className="max-h-[28rem] overflow-auto rounded border border-slate-300 bg-white">
          <table className="w-full text-left text-sm">
            <thead className="sticky top-0 bg-slate-100">
              <tr>
                {columns.map((c) => (
                  <th key={c.title} scope="col" className={c.th || "px-3 py-2"}>
                    {c.title}
                  </th>
                ))}
                <th scope="col" className="px-3 py-2"><span className="sr-only">Action</span></th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <tr key={r.id} {...{ [`data-dead-${noun}`]: r.id }} className="border-t border-slate-200">
                  {columns.map((c) => (
                    <td key={c.title} {...c.cell(r)} />
                  ))}
                  <td className="px-3 py-2">
                    {canResend(r) && (
                      <button
                        type="button"
                        className="whitespace-nowrap rounded border border-orange-700 px-3 py-1 font-medium text-orange-900 hover:bg-orange-50"
                        onClick={() => resend(r.id)}
                      >
                        Re-send<span className="sr-only"> {noun} {r.id}</span>
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {message && (
        <p role="status" className="mt-2 text-sm">
          {message}
        </p>
      )}
    </div>
  );
}
