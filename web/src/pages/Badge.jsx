const STYLES = {
  positive: "bg-red-700 text-white",
  negative: "bg-emerald-100 text-emerald-900 border border-emerald-700",
  pending: "bg-slate-200 text-slate-900",
  failed: "bg-orange-200 text-orange-950 border border-orange-700",
  skipped: "bg-slate-100 text-slate-700 border border-slate-400",
  present: "bg-red-700 text-white",
  absent: "bg-emerald-100 text-emerald-900 border border-emerald-700",
  sent: "bg-emerald-100 text-emerald-900",
  dead: "bg-orange-200 text-orange-950",
  done: "bg-emerald-100 text-emerald-900",
  queued: "bg-slate-200 text-slate-900",
  running: "bg-blue-100 text-blue-900",
  overdue: "bg-orange-100 text-orange-950 border border-dashed border-orange-700",
  "own result": "bg-slate-100 text-slate-700 border border-dashed border-slate-500",
};

export default function Badge({ value, title }) {
  return (
    <span
      title={title}
      data-badge={value}
      className={`inline-block rounded px-2 py-0.5 text-xs font-semibold uppercase tracking-wide ${STYLES[value] || "bg-slate-100"}`}
    >
      {value}
    </span>
  );
}
