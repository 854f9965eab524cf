import { useEffect, useState } from "react";
import { getJson } from "../api.js";
import { formatArea, formatDate, formatProbability, formatTime } from "../format.js";
import Badge from "./Badge.jsx";
import ModelLimits from "./ModelLimits.jsx";

const PAGE = 50;
const SORTS = [
  ["urgency", "Most urgent first"],
  ["-received", "Newest received first"],
  ["received", "Oldest received first"],
  ["-study_date", "Newest study date first"],
  ["study_date", "Oldest study date first"],
];

function dateParam(value) {
  return value ? value.replaceAll("-", "") : "";
}

export default function Worklist() {
  const [filters, setFilters] = useState({ patient_id: "", accession_number: "", date_from: "", date_to: "" });
  const [applied, setApplied] = useState(filters);
  const [offset, setOffset] = useState(0);
  const [sort, setSort] = useState("urgency");
  const [own, setOwn] = useState(false);
  const [page, setPage] = useState(null);
  const [error, setError] = useState("");

  useEffect(() => {
    let cancelled = false;
    const load = () => {
      const params = new URLSearchParams({ limit: PAGE, offset, sort });
      if (own) params.set("own", "true");
      for (const [key, value] of Object.entries(applied)) {
        const v = key.startsWith("date") ? dateParam(value) : value.trim();
        if (v) params.set(key, v);
      }
      getJson(`/api/studies?${params}`)
        .then((body) => {
          if (!cancelled) {
            setPage(body);
            setError("");
          }
        })
        .catch((e) => !cancelled && setError(e.message));
    };
    load();
    const timer = setInterval(load, 3000); // live updates
    return () => {
      cancelled = true;
      clearInterval(timer);
    };
  }, [applied, offset, sort, own]);

  const field = (key, label, type = "text") => (
    <div>
      <label htmlFor={key} className="block text-sm font-medium">
        {label}
      </label>
      <input
        id={key}
        type={type}
        className="rounded border border-slate-400 px-2 py-1"
        value={filters[key]}
        onChange={(event) => setFilters({ ...filters, [key]: event.target.value })}
      />
    </div>
  );

  return (
    <section aria-labelledby="worklist-title">
      <h2 id="worklist-title" className="mb-4 text-2xl font-semibold">
        Worklist
      </h2>
      <ModelLimits />
      <form
        role="search"
        className="mb-4 flex flex-wrap items-end gap-3"
        onSubmit={(event) => {
          event.preventDefault();
          setOffset(0);
          setApplied(filters);
        }}
      >
        {field("patient_id", "Patient ID")}
        {field("accession_number", "Accession")}
        {field("date_from", "Study date from", "date")}
        {field("date_to", "to", "date")}
        <button type="submit" className="rounded bg-blue-700 px-4 py-1.5 font-medium text-white hover:bg-blue-800">
          Search
        </button>
      </form>
      <div className="mb-3 flex flex-wrap items-center gap-6 text-sm">
        <label className="flex items-center gap-2">
          Sort
          <select
            className="rounded border border-slate-400 px-2 py-1"
            value={sort}
            data-control="sort"
            onChange={(event) => {
              setOffset(0);
              setSort(event.target.value);
            }}
          >
            {SORTS.map(([value, label]) => (
              <option key={value} value={value}>
                {label}
              </option>
            ))}
          </select>
        </label>
        <label className="flex items-center gap-2">
          <input
            type="checkbox"
            checked={own}
            data-control="own"
            onChange={(event) => {
              setOffset(0);
              setOwn(event.target.checked);
            }}
          />
          Show our own results returned by the PACS (SEG/SR/SC)
        </label>
      </div>
      {error && (
        <p role="alert" className="mb-3 text-red-700">
          {error}
        </p>
      )}
      <div className="overflow-x-auto rounded border border-slate-300 bg-white">
        <table className="w-full text-left text-sm">
          <thead className="bg-slate-100">
            <tr>
              <th scope="col" className="px-3 py-2">Finding</th>
              <th scope="col" className="px-3 py-2" title="The calibrated probability of pneumothorax on the study's most suspect image">
                Probability<span className="block text-xs font-normal text-slate-700">calibrated, of pneumothorax</span>
              </th>
              <th scope="col" className="px-3 py-2">Side</th>
              <th scope="col" className="px-3 py-2">Area</th>
              <th scope="col" className="px-3 py-2">Patient ID</th>
              <th scope="col" className="px-3 py-2">Accession</th>
              <th scope="col" className="px-3 py-2">Study date</th>
              <th scope="col" className="px-3 py-2">Received</th>
              <th scope="col" className="px-3 py-2">Images</th>
              <th scope="col" className="px-3 py-2">Study</th>
            </tr>
          </thead>
          <tbody>
            {page?.items.map((study) => (
              <tr key={study.study_uid} className="border-t border-slate-200 hover:bg-slate-50" data-study={study.study_uid}>
                <td className="px-3 py-2">
                  <Badge value={study.badge} title={study.skipped ? `${study.skipped} skipped: ${study.skip_reason}` : undefined} />
                  {study.badge === "skipped" && <span className="ml-2 text-xs text-slate-700">{study.skip_reason}</span>}
                </td>
                <td className="px-3 py-2 tabular-nums" data-probability={study.probability ?? ""}>
                  {formatProbability(study.probability)}
                </td>
                <td className="px-3 py-2" data-side>
                  {study.side || "—"}
                </td>
                <td className="px-3 py-2 tabular-nums" data-area>
                  {study.side ? formatArea(study.area_mm2, study.area_pixels) : "—"}
                </td>
                <td className="px-3 py-2">{study.patient_id || "—"}</td>
                <td className="px-3 py-2">{study.accession_number || "—"}</td>
                <td className="px-3 py-2 tabular-nums" data-date>
                  {formatDate(study.study_date)}
                </td>
                <td className="whitespace-nowrap px-3 py-2 tabular-nums" data-time>
                  {formatTime(study.received_at)}
                </td>
                <td className="px-3 py-2" data-images={study.images}>
                  {study.images}
                  {study.positives > 0 && <span className="ml-1 font-semibold text-red-700">({study.positives} positive)</span>}
                </td>
                <td className="px-3 py-2">
                  <a className="font-medium text-blue-800 underline" href={`#/study/${encodeURIComponent(study.study_uid)}`}>
                    Open<span className="sr-only"> study {study.study_uid}</span>
                  </a>
                </td>
              </tr>
            ))}
            {page && page.items.length === 0 && (
              <tr>
                <td colSpan="10" className="px-3 py-6 text-center text-slate-700">
                  No studies yet. Send images to the node, or upload them.
                </td>
              </tr>
            )}
          </tbody>
        </table>
      </div>
      {page && (
        <div className="mt-3 flex items-center gap-3 text-sm">
          <span>
            {page.total === 0 ? 0 : offset + 1}–{Math.min(offset + PAGE, page.total)} of {page.total}
          </span>
          <button type="button" disabled={offset === 0} className="rounded border px-2 py-1 disabled:opacity-40" onClick={() => setOffset(Math.max(0, offset - PAGE))}>
            Previous
          </button>
          <button type="button" disabled={offset + PAGE >= page.total} className="rounded border px-2 py-1 disabled:opacity-40" onClick={() => setOffset(offset + PAGE)}>
            Next
          </button>
        </div>
      )}
    </section>
  );
}
