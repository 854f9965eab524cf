// One way to write dates and times on every page: 2026-12-06 and 2026-12-06 14:03:27 (local
// time). DICOM dates (DA, "19010101") are shown the same way.

const pad = (n) => String(n).padStart(2, "0");

export function formatDate(value) {
  if (!value) return "—";
  const dicom = /^(\d{4})(\d{2})(\d{2})$/.exec(value);
  if (dicom) return `${dicom[1]}-${dicom[2]}-${dicom[3]}`;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

export function formatTime(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return `${formatDate(value)} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function formatProbability(value) {
  return value === null || value === undefined ? "—" : value.toFixed(2);
}

// An area for people: cm² from the pixel spacing, else pixels (no spacing in the image).
export function formatArea(areaMm2, areaPixels) {
  if (areaMm2 !== null && areaMm2 !== undefined) return `${(areaMm2 / 100).toFixed(1)} cm²`;
  if (areaPixels !== null && areaPixels !== undefined) return `${areaPixels} pixels`;
  return "—";
}
