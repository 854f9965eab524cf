import { useEffect, useState } from "react";
import { ApiError, getJson, getToken, setToken } from "./api.js";
import Worklist from "./pages/Worklist.jsx";
import Study from "./pages/Study.jsx";
import System from "./pages/System.jsx";
import Upload from "./pages/Upload.jsx";
import Performance from "./pages/Performance.jsx";

function useHashRoute() {
  const [hash, setHash] = useState(window.location.hash || "#/");
  useEffect(() => {
    const onChange = () => setHash(window.location.hash || "#/");
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return hash.slice(1);
}

function TokenForm({ onSaved, error }) {
  const [value, setValue] = useState("");
  return (
    <form
      className="mx-auto mt-16 max-w-md rounded-lg border border-slate-300 bg-white p-6 shadow-sm"
      onSubmit={(event) => {
        event.preventDefault();
        setToken(value.trim());
        onSaved();
      }}
    >
      <h2 className="mb-2 text-lg font-semibold">Sign in with the API token</h2>
      <p className="mb-4 text-sm text-slate-700">
        The token was printed when the node first started (or set as PNEUMONODE_API_TOKEN). A named
        token of PNEUMONODE_API_TOKENS (name:token,...) signs you in under its name, which your feedback
        and re-runs carry.
      </p>
      <label htmlFor="token" className="mb-1 block text-sm font-medium">
        API token
      </label>
      <input
        id="token"
        type="password"
        autoComplete="off"
        className="mb-3 w-full rounded border border-slate-400 px-3 py-2"
        value={value}
        onChange={(event) => setValue(event.target.value)}
      />
      {error && (
        <p role="alert" className="mb-3 text-sm font-medium text-red-700">
          {error}
        </p>
      )}
      <button type="submit" className="rounded bg-blue-700 px-4 py-2 font-medium text-white hover:bg-blue-800">
        Sign in
      </button>
    </form>
  );
}

const NAV = [
  ["#/", "Worklist"],
  ["#/upload", "Upload"],
  ["#/performance", "Performance"],
  ["#/system", "System"],
];

export default function App() {
  const route = useHashRoute();
  const [authorized, setAuthorized] = useState(null);
  const [authError, setAuthError] = useState("");

  const check = () => {
    if (!getToken()) {
      setAuthorized(false);
      return;
    }
    getJson("/api/studies?limit=1")
      .then(() => {
        setAuthorized(true);
        setAuthError("");
      })
      .catch((error) => {
        setAuthorized(false);
        setAuthError(error instanceof ApiError && error.status === 401 ? `Token refused: ${error.message}` : String(error.message));
      });
  };
  useEffect(check, []);

  let page;
  if (route.startsWith("/study/")) page = <Study studyUid={decodeURIComponent(route.slice(7))} />;
  else if (route === "/system") page = <System />;
  else if (route === "/upload") page = <Upload />;
  else if (route === "/performance") page = <Performance />;
  else page = <Worklist />;

  return (
    <div className="min-h-screen">
      <div role="note" className="bg-amber-300 px-4 py-1 text-center text-sm font-semibold text-amber-950">
        AI result — not for clinical use
      </div>
      <header className="border-b border-slate-300 bg-white">
        <div className="mx-auto flex max-w-7xl items-center gap-6 px-4 py-3">
          <h1 className="text-xl font-bold tracking-tight">
            <a href="#/">pneumonode</a>
          </h1>
          <nav aria-label="Main" className="flex gap-4">
            {NAV.map(([href, label]) => (
              <a
                key={href}
                href={href}
                aria-current={`#${route}` === href ? "page" : undefined}
                className="rounded px-2 py-1 font-medium text-slate-800 hover:bg-slate-100 aria-[current=page]:bg-slate-200"
              >
                {label}
              </a>
            ))}
          </nav>
          {authorized && (
            <button
              type="button"
              className="ml-auto text-sm text-slate-700 underline"
              onClick={() => {
                setToken("");
                setAuthorized(false);
              }}
            >
              Sign out
            </button>
          )}
        </div>
      </header>
      <main className="mx-auto max-w-7xl px-4 py-6">
        {authorized === null && <p>Loading…</p>}
        {authorized === false && <TokenForm onSaved={check} error={authError} />}
        {authorized && page}
      </main>
    </div>
  );
}
