import { useEffect, useState } from "react";
import { getJson, health } from "../api.js";
import ProblemList from "./ProblemList.jsx";

function Bars({ values, label }) {
  const max = Math.max(1, ...values);
  const width = 600;
  const height = 120;
  const step = width / Math.max(1, values.length);
  return (
    <svg role="img" aria-label={label} viewBox={`0 0 ${width} ${height + 16}`} className="w-full max-w-2xl rounded border border-slate-300 bg-white">
      {values.map((v, i) => (
        <rect key={i} x={i * step + 1} y={height - (v / max) * height} width={Math.max(1, step - 2)} height={(v / max) * height} fill="#1d4ed8" />
      ))}
      <text x="4" y={height + 13} fontSize="11" fill="#334155">
        {values.length} min ago
      </text>
      <text x={width - 4} y={height + 13} fontSize="11" fill="#334155" textAnchor="end">
        now · max {max}/min
      </text>
    </svg>
  );
}

function Latency({ stages }) {
  const max = Math.max(0.001, ...stages.map((s) => s.p95 || 0));
  return (
    <table className="text-sm">
      <thead>
        <tr>
          <th scope="col" className="pr-4 text-left">Stage</th>
          <th scope="col" className="pr-4 text-right">p50</th>
          <th scope="col" className="pr-4 text-right">p95</th>
          <th scope="col"><span className="sr-only">Chart</span></th>
        </tr>
      </thead>
      <tbody>
        {stages.map((s) => (
          <tr key={s.stage}>
            <td className="pr-4">{s.stage.replaceAll("_", " ")}</td>
            <td className="pr-4 text-right tabular-nums">{s.p50 === null ? "—" : `${s.p50.toFixed(3)} s`}</td>
            <td className="pr-4 text-right tabular-nums">{s.p95 === null ? "—" : `${s.p95.toFixed(3)} s`}</td>
            <td className="w-64">
              <div className="h-3 rounded bg-blue-700" style={{ width: `${((s.p50 || 0) / max) * 100}%` }} />
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

// Deliveries that wait for someone: dead-lettered (re-send one) or overdue (is a listener up?).
const DELIVERY_COLUMNS = [
  { title: "Object", cell: (d) => ({ className: "px-3 py-2 font-mono text-xs font-semibold", "data-kind": d.kind, children: d.kind }) },
  { title: "Destination", cell: (d) => ({ className: "px-3 py-2", children: d.destination }) },
];

const CHANNELS = { hl7: "HL7", webhook: "webhook" };

// Alerts (HL7 ORU over MLLP, webhooks) that wait for someone: dead-lettered (re-send one) or
// overdue (is a listener, which retries them, up?). A webhook URL comes redacted.
const ALERT_COLUMNS = [
  {
    title: "Kind",
    cell: (a) => ({
      className: "whitespace-nowrap px-3 py-2 font-mono text-xs font-semibold",
      "data-channel": a.channel,
      children: (
        <>
          {CHANNELS[a.channel] || a.channel}
          {a.correction && <span className="ml-1 font-sans font-normal text-slate-700">(correction)</span>}
        </>
      ),
    }),
  },
  { title: "Target", cell: (a) => ({ className: "break-words px-3 py-2", "data-target": true, children: a.destination }) },
];
const ALERT_EXTRA = [
  { title: "Attempts", th: "px-3 py-2 text-right", cell: (a) => ({ className: "px-3 py-2 text-right tabular-nums", "data-attempts": true, children: a.attempts }) },
];

export default function System() {
  const [state, setState] = useState(null);
  const [stats, setStats] = useState(null);
  const [model, setModel] = useState(null);
  const [problems, setProblems] = useState(null);
  const [alertProblems, setAlertProblems] = useState(null);
  const [error, setError] = useState("");
  const loadProblems = () =>
    getJson("/api/deliveries/problems")
      .then(setProblems)
      .catch((e) => setError(e.message));
  const loadAlertProblems = () =>
    getJson("/api/alerts/problems")
      .then(setAlertProblems)
      .catch((e) => setError(e.message));

  useEffect(() => {
    const load = () => {
      health().then(setState).catch((e) => setError(e.message));
      getJson("/api/stats").then(setStats).catch((e) => setError(e.message));
      loadProblems();
      loadAlertProblems();
    };
    load();
    getJson("/api/model").then(setModel).catch((e) => setError(e.message));
    const timer = setInterval(load, 5000);
    return () => clearInterval(timer);
  }, []);

  return (
    <section aria-labelledby="system-title" className="space-y-6">
      <h2 id="system-title" className="text-2xl font-semibold">
        System
      </h2>
      {error && <p role="alert" className="text-red-700">{error}</p>}
      {state && (
        <div>
          <h3 className="mb-2 text-lg font-semibold">
            Health: {state.ready ? <span className="text-emerald-800">ready</span> : <span className="text-red-700">not ready</span>}
          </h3>
          <ul className="grid gap-2 sm:grid-cols-2 lg:grid-cols-3">
            {Object.entries(state.components).map(([name, c]) => (
              <li key={name} data-component={name} data-state={c.state} className="rounded border border-slate-300 bg-white p-3 text-sm">
                <span className={`mr-2 font-semibold ${c.state === "ok" ? "text-emerald-800" : c.state === "down" ? "text-red-700" : "text-orange-800"}`}>
                  <span aria-hidden="true">{c.state === "ok" ? "●" : "▲"}</span> {name}: {c.state}
                </span>
                <span className="block text-slate-700">{c.detail}</span>
              </li>
            ))}
          </ul>
        </div>
      )}
      {problems && (
        <ProblemList
          noun="delivery"
          plural="deliveries"
          rows={problems}
          onResent={loadProblems}
          empty="None: every result was sent or is waiting for its next attempt."
          lead={DELIVERY_COLUMNS}
          canResend={(d) => d.state === "dead"}
        />
      )}
      {alertProblems && (
        <ProblemList
          noun="alert"
          plural="alerts"
          rows={alertProblems}
          onResent={loadAlertProblems}
          empty="None: every alert was sent or is waiting for its next attempt."
          lead={ALERT_COLUMNS}
          extra={ALERT_EXTRA}
          canResend={(a) => a.resendable}
        />
      )}
      {stats && (
        <div className="space-y-3">
          <h3 className="text-lg font-semibold">Throughput (images finished per minute) · queue depth {stats.queue_depth}</h3>
          <Bars values={stats.done_per_minute} label="Images finished per minute over the last hour" />
          <h3 className="text-lg font-semibold">Latency per stage (last 500 images)</h3>
          <Latency stages={stats.stages} />
        </div>
      )}
      {model && (
        <div>
          <h3 className="mb-2 text-lg font-semibold">
            Model: {model.name} {model.version}
          </h3>
          <p className="mb-2 text-sm">
            Input {model.input_size}×{model.input_size}, threshold {model.threshold}{model.grow_threshold != null && ` (regions grown to ${model.grow_threshold})`}, minimum area {model.min_area_pixels} px. {model.intended_use}
          </p>
          {model.card && (
            <details className="rounded border border-slate-300 bg-white p-3">
              <summary className="cursor-pointer font-medium">Model card</summary>
              <pre className="mt-2 whitespace-pre-wrap text-xs">{model.card}</pre>
            </details>
          )}
        </div>
      )}
    </section>
  );
}
