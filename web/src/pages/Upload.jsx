import { useState } from "react";
import { upload } from "../api.js";

export default function Upload() {
  const [over, setOver] = useState(false);
  const [busy, setBusy] = useState(false);
  const [outcome, setOutcome] = useState(null);
  const [error, setError] = useState("");

  const send = (files) => {
    if (!files.length) return;
    setBusy(true);
    setError("");
    upload(files)
      .then(setOutcome)
      .catch((e) => setError(e.message))
      .finally(() => setBusy(false));
  };

  return (
    <section aria-labelledby="upload-title">
      <h2 id="upload-title" className="mb-4 text-2xl font-semibold">
        Upload DICOM files
      </h2>
      <label
        htmlFor="files"
        onDragOver={(e) => {
          e.preventDefault();
          setOver(true);
        }}
        onDragLeave={() => setOver(false)}
        onDrop={(e) => {
          e.preventDefault();
          setOver(false);
          send([...e.dataTransfer.files]);
        }}
        className={`flex h-48 cursor-pointer flex-col items-center justify-center rounded-lg border-2 border-dashed ${over ? "border-blue-700 bg-blue-50" : "border-slate-400 bg-white"}`}
      >
        <span className="font-medium">Drop DICOM files here, or choose them</span>
        <span className="text-sm text-slate-700">They go through the same pipeline as images a PACS sends.</span>
        <input id="files" type="file" multiple className="sr-only" onChange={(e) => send([...e.target.files])} />
      </label>
      {busy && <p role="status" className="mt-3">Uploading…</p>}
      {error && (
        <p role="alert" className="mt-3 text-red-700">
          {error}
        </p>
      )}
      {outcome && (
        <div className="mt-4">
          <p role="status" className="mb-2 font-medium">
            {outcome.stored} stored, {outcome.refused} refused. Follow them in the <a className="text-blue-800 underline" href="#/">worklist</a>.
          </p>
          <ul className="text-sm">
            {outcome.items.map((item, i) => (
              <li key={i} data-upload={item.stored ? "stored" : "refused"}>
                <span className={item.stored ? "text-emerald-800" : "text-red-700"}>{item.stored ? "✔" : "✘"}</span> {item.filename}: {item.message}
              </li>
            ))}
          </ul>
        </div>
      )}
    </section>
  );
}
