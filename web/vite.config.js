import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";
import tailwindcss from "@tailwindcss/vite";

// The API serves the built page from src/pneumonode/api/static (not committed).
const api = "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react(), tailwindcss()],
  build: { outDir: "../src/pneumonode/api/static", emptyOutDir: true },
  server: { proxy: { "/api": api, "/health": api, "/metrics": api } },
});
