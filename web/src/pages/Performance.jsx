import { useEffect, useState } from "react";
import { getJson } from "../api.js";

// Live performance over a period (GET /api/performance): agreement, PPV, a sensitivity
// estimate from reported misses, counts by manufacturer, station and view, a per-day trend,
// and input drift against the model's training data.

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function percent(value) {
  return value == null ? "—" : `${(100 * value).toFixed(0)} %`;
}

function num(value) {
  return value == null ? "—" : String(Number(value.toPrecision(4)));
}

function Stat({ label, value, hint }) {
  return (
    <div className="rounded border border-slate-300 bg-white p-3">
      <dt className="text-sm text-slate-700">{label}</dt>
      <dd className="text-2xl font-semibold tabular-nums" data-stat={label}>
        {value}
      </dd>
      {hint && <p className="text-xs text-slate-600">{hint}</p>}
    </div>
  );
}

function Trend({ days }) {
  if (days.length === 0) return <p className="text-sm text-slate-700">No films in this period.</p>;
  const width = 720;
  const height = 160;
  const pad = 28;
  const most = Math.max(...days.map((d) => d.films), 1);
  const step = (width - 2 * pad) / days.length;
  const y = (fraction) => height - pad - fraction * (height - 2 * pad);
  const agreement = days
    .map((d, i) => (d.agreement == null ? null : `${pad + step * (i + 0.5)},${y(d.agreement)}`))
    .filter(Boolean);
  return (
    <svg role="img" aria-label="Films and agreement per day" viewBox={`0 0 ${width} ${height}`} className="w-full max-w-3xl rounded border border-slate-300 bg-white">
      {days.map((d, i) => (
        <g key={d.day}>
          <rect x={pad + step * i + 2} width={Math.max(step - 4, 1)} y={y(d.films / most)} height={y(0) - y(d.films / most)} className="fill-slate-300">
            <title>{`${d.day}: ${d.films} films, ${d.positives} positive, ${d.reviewed} reviewed`}</title>
          </rect>
          <rect x={pad + step * i + 2} width={Math.max(step - 4, 1)} y={y(d.positives / most)} height={y(0) - y(d.positives / most)} className="fill-orange-400" />
        </g>
      ))}
      {agreement.length > 0 && <polyline points={agreement.join(" ")} fill="none" strokeWidth="2" className="stroke-blue-700" />}
      {agreement.map((point) => {
        const [cx, cy] = point.split(",");
        return <circle key={point} cx={cx} cy={cy} r="4" className="fill-blue-700" />;
      })}
      <line x1={pad} x2={width - pad} y1={y(0)} y2={y(0)} className="stroke-slate-500" />
      <text x={pad} y={14} className="fill-slate-700 text-[11px]">
        bars: films (orange: called positive, max {most}); line: agreement 0–100 %
      </text>
      <text x={pad} y={height - 8} className="fill-slate-700 text-[11px]">
        {days[0].day}
      </text>
      <text x={width - pad} y={height - 8} textAnchor="end" className="fill-slate-700 text-[11px]">
        {days[days.length - 1].day}
      </text>
    </svg>
  );
}

function Groups({ title, rows }) {
  return (
    <div>
      <h4 className="mb-1 font-medium">{title}</h4>
      <table className="w-full text-sm">
        <thead>
          <tr className="text-left text-slate-700">
            <th className="pr-2 font-medium">Value</th>
            <th className="pr-2 font-medium">Films</th>
            <th className="pr-2 font-medium">Positive</th>
            <th className="pr-2 font-medium">Reviewed</th>
            <th className="font-medium">Agreement</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.value} className="border-t border-slate-200 tabular-nums">
              <td className="pr-2">{r.value}</td>
              <td className="pr-2">{r.films}</td>
              <td className="pr-2">{r.positives}</td>
              <td className="pr-2">{r.reviewed}</td>
              <td>{percent(r.agreement)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

// What a drift row compares, where its name alone does not say it.
const FEATURE_NOTES = {
  pixel_spacing_mm: "from the header",
  input_mean: "model input: mean grey, 0–1",
  input_std: "model input: contrast (standard deviation), 0–1",
  input_dark_share: "model input: share of near-black pixels",
};

function Drift({ drift, source }) {
  return (
    <div>
      <p className="mb-2 text-sm text-slate-700">
        {source ? `Compared with the model's training data: ${source}.` : "The model carries no training_data.json: distributions are shown without a comparison."}
      </p>
      <table className="w-full text-sm">
        <thead>
          <tr className="text-left text-slate-700">
            <th className="pr-2 font-medium">Feature</th>
            <th className="pr-2 font-medium">This period</th>
            <th className="pr-2 font-medium">Training data</th>
            <th className="font-medium">Drift</th>
          </tr>
        </thead>
        <tbody>
          {drift.map((d) => (
            <tr key={d.feature} data-drift={d.feature} className="border-t border-slate-200 align-top">
              <td className="pr-2">
                <span className="font-mono text-xs">{d.feature}</span>
                {FEATURE_NOTES[d.feature] && <span className="block text-xs text-slate-600">{FEATURE_NOTES[d.feature]}</span>}
              </td>
              <td className="pr-2">
                {d.distribution
                  ? d.distribution.map((v) => `${v.value}: ${v.films}`).join(", ") || "—"
                  : d.films
                    ? `${num(d.min)} – ${num(d.max)} (median ${num(d.median)}, ${d.films} films)`
                    : "—"}
              </td>
              <td className="pr-2">
                {d.distribution ? (d.training_values ? d.training_values.join(", ") : "—") : d.training_range ? `${d.training_range[0]} – ${d.training_range[1]}` : "—"}
              </td>
              <td>
                {d.flagged ? (
                  <span className="rounded bg-red-100 px-2 py-0.5 font-medium text-red-900" data-flagged="true">
                    {d.unseen ? `unseen: ${d.unseen.join(", ")}` : `${d.outside} outside (${percent(d.outside_share)})`}
                  </span>
                ) : (
                  <span className="text-slate-700">{d.outside ? `${d.outside} outside` : "in range"}</span>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export default function Performance() {
  const today = new Date();
  const [since, setSince] = useState(isoDay(new Date(today.getTime() - 30 * 86400000)));
  const [until, setUntil] = useState(isoDay(today));
  const [report, setReport] = useState(null);
  const [error, setError] = useState("");

  useEffect(() => {
    // until is a day: the whole of it counts
    const end = new Date(`${until}T00:00:00Z`);
    end.setUTCDate(end.getUTCDate() + 1);
    getJson(`/api/performance?since=${encodeURIComponent(since)}&until=${encodeURIComponent(end.toISOString())}`)
      .then((body) => {
        setReport(body);
        setError("");
      })
      .catch((e) => setError(e.message));
  }, [since, until]);

  const o = report?.overall;
  return (
    <section aria-labelledby="performance-title" className="space-y-6">
      <div className="flex flex-wrap items-end gap-4">
        <h2 id="performance-title" className="text-2xl font-semibold">
          Performance
        </h2>
        <label className="text-sm">
          From{" "}
          <input type="date" className="rounded border border-slate-400 px-2 py-1" value={since} onChange={(e) => setSince(e.target.value)} />
        </label>
        <label className="text-sm">
          To{" "}
          <input type="date" className="rounded border border-slate-400 px-2 py-1" value={until} onChange={(e) => setUntil(e.target.value)} />
        </label>
      </div>
      {error && (
        <p role="alert" className="text-red-700">
          {error}
        </p>
      )}
      {o && (
        <>
          <dl className="grid grid-cols-2 gap-3 md:grid-cols-3 lg:grid-cols-6">
            <Stat label="Films" value={o.films} hint={`${o.positives} called positive`} />
            <Stat label="Reviewed" value={o.reviewed} hint={`${o.agreed} agree, ${o.disagreed} disagree, ${o.missed} missed`} />
            <Stat label="Agreement" value={percent(o.agreement)} hint="agree / reviewed" />
            <Stat label="PPV" value={percent(o.ppv)} hint="agreed positives / reviewed positives" />
            <Stat label="Sensitivity (estimate)" value={percent(o.sensitivity_estimate)} hint="agreed positives / (those + reported misses)" />
            <Stat label="Drift" value={report.drift_flagged ? "flagged" : "none"} hint="inputs against the training data" />
          </dl>
          <div>
            <h3 className="mb-2 text-lg font-semibold">Trend</h3>
            <Trend days={report.trend} />
          </div>
          <div className="grid gap-6 lg:grid-cols-3">
            <Groups title="By manufacturer" rows={report.by_manufacturer} />
            <Groups title="By station" rows={report.by_station} />
            <Groups title="By view" rows={report.by_view} />
          </div>
          <div>
            <h3 className="mb-2 text-lg font-semibold">Input drift</h3>
            <Drift drift={report.drift} source={report.training_data} />
          </div>
          <p className="text-xs text-slate-600">
            Only reviewed films count in the rates; the sensitivity is an upper bound, as unreviewed negatives may hide more misses. AI result — not for clinical use.
          </p>
        </>
      )}
    </section>
  );
}
