import { useEffect, useState } from "react";
import { getJson, imageUrl, postJson } from "../api.js";
import { formatArea, formatDate, formatTime } from "../format.js";
import Badge from "./Badge.jsx";
import Feedback from "./Feedback.jsx";
import ModelLimits from "./ModelLimits.jsx";

function Viewer({ instance }) {
  const [showOverlay, setShowOverlay] = useState(true);
  const [opacity, setOpacity] = useState(35);
  const [outline, setOutline] = useState(true);
  const [src, setSrc] = useState(null);
  const [error, setError] = useState("");
  const hasOverlay = Boolean(instance.overlay_url);

  useEffect(() => {
    if (!instance.image_url) return undefined;
    let url = null;
    let cancelled = false;
    const path =
      hasOverlay && showOverlay
        ? `${instance.overlay_url}?opacity=${opacity / 100}&outline=${outline}`
        : instance.image_url;
    const timer = setTimeout(() => {
      imageUrl(path)
        .then((made) => {
          url = made;
          if (!cancelled) setSrc(made);
          setError("");
        })
        .catch((e) => setError(e.message));
    }, 120);
    return () => {
      cancelled = true;
      clearTimeout(timer);
      if (url) setTimeout(() => URL.revokeObjectURL(url), 1000);
    };
  }, [instance.image_url, instance.overlay_url, hasOverlay, showOverlay, opacity, outline]);

  if (instance.pruned_at)
    return (
      <p className="text-slate-700" data-pruned>
        Image and result files deleted by the retention policy on{" "}
        {formatTime(instance.pruned_at)}; the PACS keeps the original.
      </p>
    );
  if (instance.own_output)
    return <p className="text-slate-700">Our own result, returned by the PACS: not analysed again.</p>;
  if (!instance.image_url) return <p className="text-slate-700">No image to show.</p>;
  const id = instance.sop_uid;
  return (
    <div>
      {hasOverlay && (
        <fieldset className="mb-2 flex flex-wrap items-center gap-4 text-sm">
          <legend className="sr-only">Overlay</legend>
          <label className="flex items-center gap-1">
            <input type="checkbox" checked={showOverlay} onChange={(e) => setShowOverlay(e.target.checked)} data-control="overlay" />
            Show finding
          </label>
          <label className="flex items-center gap-2" htmlFor={`opacity-${id}`}>
            Opacity
            <input
              id={`opacity-${id}`}
              type="range"
              min="0"
              max="100"
              value={opacity}
              disabled={!showOverlay}
              onChange={(e) => setOpacity(Number(e.target.value))}
              data-control="opacity"
            />
            <span className="w-10 tabular-nums">{opacity}%</span>
          </label>
          <label className="flex items-center gap-1">
            <input type="checkbox" checked={outline} disabled={!showOverlay} onChange={(e) => setOutline(e.target.checked)} data-control="outline" />
            Outline
          </label>
        </fieldset>
      )}
      {error && <p role="alert" className="text-red-700">{error}</p>}
      {src ? (
        <img
          src={src}
          data-sop={id}
          alt={showOverlay && hasOverlay ? "Radiograph with the AI finding marked" : "Radiograph"}
          className="max-h-[70vh] w-auto max-w-full rounded border border-slate-300 bg-black"
        />
      ) : (
        <div className="flex h-64 items-center justify-center rounded border border-slate-300 bg-slate-100">Loading image…</div>
      )}
    </div>
  );
}

function Finding({ instance, onAction }) {
  const { job, result } = instance;
  const [message, setMessage] = useState("");
  const act = (path) =>
    postJson(path)
      .then((body) => {
        setMessage(body.message);
        onAction();
      })
      .catch((e) => setMessage(e.message));
  const dead = result?.deliveries.some((d) => d.state === "dead");
  return (
    <div className="space-y-3 text-sm">
      {instance.own_output && (
        <p data-own-output>
          <Badge value="own result" /> <span className="ml-1">Our own output, returned by the PACS (loop guard): not analysed.</span>
        </p>
      )}
      {instance.status === "skipped" && !instance.own_output && (
        <p>
          <Badge value="skipped" /> <span className="ml-1">{instance.skip_reason}</span>
        </p>
      )}
      {job && (
        <p>
          Job <Badge value={job.state} />
          {job.error && <span className="ml-2 text-orange-900">{job.error}</span>}
        </p>
      )}
      {result && (
        <dl className="grid grid-cols-[max-content_1fr] gap-x-4 gap-y-1">
          <dt className="font-medium">Pneumothorax</dt>
          <dd>
            <Badge value={result.pneumothorax ? "present" : "absent"} />
          </dd>
          {result.probability != null && (
            <>
              <dt className="font-medium">
                Probability<span className="block text-xs font-normal text-slate-700">calibrated, of pneumothorax</span>
              </dt>
              <dd data-probability={result.probability}>
                {result.probability.toFixed(2)}
                {result.operating_point != null && (
                  <span className="ml-2 text-slate-600">
                    (called present at ≥ {result.operating_point.toFixed(2)})
                  </span>
                )}
              </dd>
            </>
          )}
          <dt className="font-medium">Top pixel score (not a probability)</dt>
          <dd>{result.max_probability.toFixed(2)}</dd>
          {result.pneumothorax && (
            <>
              <dt className="font-medium">Area</dt>
              <dd>{formatArea(result.area_mm2, result.area_pixels)}</dd>
              <dt className="font-medium">Side</dt>
              <dd>
                {result.side}
                {result.side_assumed && " (orientation assumed)"}
              </dd>
            </>
          )}
          <dt className="font-medium">Model</dt>
          <dd>
            {result.model_version} (threshold {result.threshold})
          </dd>
        </dl>
      )}
      {result && result.deliveries.length > 0 && (
        <div>
          <h4 className="font-medium">Sent to</h4>
          <ul className="space-y-1">
            {result.deliveries.map((d) => (
              <li key={d.id} data-delivery={d.id}>
                <span data-kind={d.kind} className="mr-2 inline-block w-10 rounded bg-slate-200 px-1 text-center font-mono text-xs font-semibold">
                  {d.kind}
                </span>
                {d.destination} <Badge value={d.state} />
                {d.sent_at && <span className="ml-1 tabular-nums text-slate-700">{formatTime(d.sent_at)}</span>}{" "}
                {d.last_error && <span className="text-orange-900">{d.last_error}</span>}
              </li>
            ))}
          </ul>
        </div>
      )}
      <div className="flex gap-2">
        {job && !["pending", "queued", "running"].includes(job.state) && (
          <button type="button" className="rounded border border-blue-700 px-3 py-1 font-medium text-blue-800 hover:bg-blue-50" onClick={() => act(`/api/jobs/${job.id}/rerun`)}>
            Re-run
          </button>
        )}
        {dead && (
          <button type="button" className="rounded border border-orange-700 px-3 py-1 font-medium text-orange-900 hover:bg-orange-50" onClick={() => act(`/api/results/${result.id}/resend`)}>
            Resend
          </button>
        )}
      </div>
      {message && <p role="status">{message}</p>}
    </div>
  );
}

export default function Study({ studyUid }) {
  const [study, setStudy] = useState(null);
  const [error, setError] = useState("");
  const [tick, setTick] = useState(0);
  const [own, setOwn] = useState(false);

  useEffect(() => {
    let cancelled = false;
    const load = () =>
      getJson(`/api/studies/${encodeURIComponent(studyUid)}${own ? "?own=true" : ""}`)
        .then((body) => !cancelled && setStudy(body))
        .catch((e) => !cancelled && setError(e.message));
    load();
    const timer = setInterval(load, 3000);
    return () => {
      cancelled = true;
      clearInterval(timer);
    };
  }, [studyUid, tick, own]);

  if (error) return <p role="alert" className="text-red-700">{error}</p>;
  if (!study) return <p>Loading…</p>;
  return (
    <section aria-labelledby="study-title">
      <a href="#/" className="text-sm text-blue-800 underline">
        ← Worklist
      </a>
      <h2 id="study-title" className="mt-2 text-2xl font-semibold">
        Study <Badge value={study.badge} />
        {study.probability != null && (
          <span className="ml-3 text-base font-normal" title="The calibrated probability of pneumothorax on the study's most suspect image">
            Probability {study.probability.toFixed(2)} <span className="text-sm text-slate-700">(calibrated, of pneumothorax)</span>
          </span>
        )}
      </h2>
      <p className="mb-4 text-sm text-slate-700">
        Patient {study.patient_id || "—"} · Accession {study.accession_number || "—"} · Study date{" "}
        <span data-date>{formatDate(study.study_date)}</span> · Received <span data-time>{formatTime(study.received_at)}</span> ·{" "}
        <span className="font-mono">{study.study_uid}</span>
      </p>
      <ModelLimits />
      <label className="mb-4 flex items-center gap-2 text-sm">
        <input type="checkbox" checked={own} data-control="own" onChange={(event) => setOwn(event.target.checked)} />
        Show our own results returned by the PACS (SEG/SR/SC)
      </label>
      {study.instances.map((instance) => (
        <article key={instance.sop_uid} className="mb-6 grid gap-4 rounded border border-slate-300 bg-white p-4 lg:grid-cols-[2fr_1fr]">
          <Viewer instance={instance} />
          <div>
            <h3 className="mb-2 font-semibold">
              {instance.modality || "?"} image <span className="font-mono text-xs">{instance.sop_uid}</span>
            </h3>
            <Finding instance={instance} onAction={() => setTick((t) => t + 1)} />
            <Feedback instance={instance} />
          </div>
        </article>
      ))}
      <h3 className="mb-2 text-lg font-semibold">Audit trail</h3>
      <ol className="space-y-1 border-l-2 border-slate-300 pl-4 text-sm">
        {study.audit.map((event) => (
          <li key={event.id}>
            <time className="mr-2 tabular-nums text-slate-700" dateTime={event.at}>
              {formatTime(event.at)}
            </time>
            <span className="mr-2 font-mono text-xs">{event.kind}</span>
            {event.message}
          </li>
        ))}
      </ol>
    </section>
  );
}
