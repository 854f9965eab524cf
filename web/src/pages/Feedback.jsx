import { useEffect, useState } from "react";
import { ApiError, getJson, getToken } from "../api.js";
import { formatTime } from "../format.js";

// A radiologist's verdict on one image's result: agree, disagree (no pneumothorax) or missed
// (a pneumothorax the model did not mark), with an optional comment. Stored per image under
// the name of the signed-in token; the newest verdict counts.

const VERDICTS = [
  ["agree", "Agree", "the model's call is right"],
  ["disagree", "Disagree", "no pneumothorax"],
  ["missed", "Missed", "a pneumothorax the model did not mark"],
];

async function postFeedback(sopUid, verdict, comment) {
  const response = await fetch(`/api/instances/${encodeURIComponent(sopUid)}/feedback`, {
    method: "POST",
    headers: { Authorization: `Bearer ${getToken()}`, "Content-Type": "application/json" },
    body: JSON.stringify({ verdict, comment: comment.trim() || null }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, typeof body.detail === "string" ? body.detail : response.statusText);
  return body;
}

export default function Feedback({ instance }) {
  const sop = instance.sop_uid;
  const [history, setHistory] = useState([]);
  const [verdict, setVerdict] = useState("");
  const [comment, setComment] = useState("");
  const [message, setMessage] = useState("");
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (!instance.result) return;
    getJson(`/api/instances/${encodeURIComponent(sop)}/feedback`)
      .then(setHistory)
      .catch((e) => setMessage(e.message));
  }, [sop, Boolean(instance.result)]);

  if (!instance.result) return null;
  const latest = history[0];
  const submit = (event) => {
    event.preventDefault();
    if (!verdict) {
      setMessage("Choose agree, disagree or missed first.");
      return;
    }
    setBusy(true);
    postFeedback(sop, verdict, comment)
      .then((row) => {
        setHistory([row, ...history]);
        setComment("");
        setMessage(`Feedback saved: ${row.verdict}.`);
      })
      .catch((e) => setMessage(e.message))
      .finally(() => setBusy(false));
  };
  return (
    <form data-feedback={sop} onSubmit={submit} className="mt-4 space-y-2 rounded border border-slate-300 p-3 text-sm">
      <fieldset>
        <legend className="mb-1 font-medium">Radiologist feedback</legend>
        <div className="flex flex-wrap gap-3">
          {VERDICTS.map(([value, label, hint]) => (
            <label key={value} className="flex items-center gap-1">
              <input type="radio" name={`verdict-${sop}`} value={value} checked={verdict === value} onChange={() => setVerdict(value)} />
              <span className="font-medium">{label}</span>
              <span className="text-slate-600">({hint})</span>
            </label>
          ))}
        </div>
      </fieldset>
      <label className="block">
        <span className="mb-1 block">Comment (optional)</span>
        <textarea
          className="w-full rounded border border-slate-400 px-2 py-1"
          rows={2}
          maxLength={2000}
          value={comment}
          onChange={(event) => setComment(event.target.value)}
        />
      </label>
      <button type="submit" disabled={busy} className="rounded bg-blue-700 px-3 py-1 font-medium text-white hover:bg-blue-800 disabled:opacity-50">
        Save feedback
      </button>
      {message && (
        <p role="status" aria-live="polite">
          {message}
        </p>
      )}
      {latest && (
        <p data-verdict={latest.verdict} className="text-slate-700">
          Newest verdict: <span className="font-medium">{latest.verdict}</span> by {latest.reviewer},{" "}
          <time dateTime={latest.created_at}>{formatTime(latest.created_at)}</time>
          {latest.comment && <span> — “{latest.comment}”</span>}
          {history.length > 1 && <span> ({history.length} reviews)</span>}
        </p>
      )}
    </form>
  );
}
