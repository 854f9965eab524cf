// The API client: every call carries the bearer token the user entered.

const TOKEN_KEY = "pneumonode-token";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function request(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${getToken()}` },
  });
  if (!response.ok) {
    let message = response.statusText;
    try {
      const body = await response.json();
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch {
      /* not JSON */
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function postJson(path) {
  return (await request(path, { method: "POST" })).json();
}

export async function upload(files) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const response = await fetch("/api/upload", {
    method: "POST",
    body: form,
    headers: { Authorization: `Bearer ${getToken()}` },
  });
  const body = await response.json();
  if (!response.ok && response.status !== 207) throw new ApiError(response.status, body.detail);
  return body;
}

// An image that needs the token: fetched as a blob, shown through an object URL.
export async function imageUrl(path) {
  const blob = await (await request(path)).blob();
  return URL.createObjectURL(blob);
}

export async function health() {
  const response = await fetch("/health");
  return response.json();
}
