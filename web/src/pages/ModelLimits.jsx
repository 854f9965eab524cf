import { useEffect, useState } from "react";
import { getJson } from "../api.js";

// What the served model can and cannot do, in the words of its card (GET /api/model reads the
// card's first paragraph and its "Known limits"): the card is the one place they are written.
export default function ModelLimits({ open = false }) {
  const [model, setModel] = useState(null);
  const [error, setError] = useState("");

  useEffect(() => {
    getJson("/api/model")
      .then(setModel)
      .catch((e) => setError(e.message));
  }, []);

  if (error)
    return (
      <p role="alert" className="mb-4 text-sm text-orange-900">
        The model's limits cannot be shown: {error}
      </p>
    );
  if (!model) return null;
  return (
    <aside aria-label="What the model can and cannot do" data-model-limits className="mb-4 rounded border border-amber-400 bg-amber-50 p-3 text-sm">
      <p>
        <span className="font-semibold">
          {model.name} {model.version}:
        </span>{" "}
        {model.summary || "this model has no model card: its limits are not stated. Treat every result as unvalidated."}
        {model.operating_point != null && (
          <span>
            {" "}
            Each film gets a calibrated probability of pneumothorax; it is called positive at a probability of {model.operating_point.toFixed(2)} or more.
          </span>
        )}
      </p>
      {model.limits.length > 0 && (
        <details open={open} className="mt-2">
          <summary className="cursor-pointer font-medium">Known limits of the model</summary>
          <ul className="mt-1 list-disc space-y-1 pl-5">
            {model.limits.map((limit) => (
              <li key={limit}>{limit}</li>
            ))}
          </ul>
        </details>
      )}
      {model.card && (
        <p className="mt-2">
          The measurements are in the full model card, on the{" "}
          <a href="#/system" className="text-blue-800 underline">
            System page
          </a>
          .
        </p>
      )}
    </aside>
  );
}
