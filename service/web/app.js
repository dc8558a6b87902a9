// FRLIE web page: upload a photo to POST /enhance, compare before/after, download.
// Everything user-provided (file names, error texts) is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  status: $("status"), drop: $("drop-zone"), file: $("file-input"), fileName: $("file-name"), limits: $("limits"),
  auto: $("strength-auto"), strength: $("strength"), strengthValue: $("strength-value"),
  format: $("format"), quality: $("quality"), enhance: $("enhance"), cancel: $("cancel"),
  progress: $("progress"), elapsed: $("elapsed"), error: $("error"),
  result: $("result-section"), before: $("before"), after: $("after"), clip: $("before-clip"),
  divider: $("divider"), reveal: $("reveal"), download: $("download"), details: $("details"),
};
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/avif": "avif" };
let limits = { bytes: null, pixels: null };
let chosen = null;        // the File to enhance
let request = null;       // the XMLHttpRequest in flight
let timer = null;
let objectUrls = [];

function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(bytes >= 10 * 1024 * 1024 ? 0 : 1)} MB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${bytes} bytes`;
}

function setStatus(text) { els.status.textContent = text; }

function showError(text) {
  els.error.textContent = text;
  els.error.hidden = false;
}

function clearError() { els.error.hidden = true; els.error.textContent = ""; }

async function loadServiceInfo() {
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) {
      setStatus(`The model is loading (${typeof body.detail === "string" ? body.detail : "please wait"})…`);
      setTimeout(loadServiceInfo, 2000);
      return;
    }
    limits = { bytes: body.settings.max_upload_bytes, pixels: body.settings.max_pixels };
    els.limits.textContent = `JPEG, HEIC, AVIF, PNG, WebP, BMP or TIFF; up to ${formatBytes(limits.bytes)} and `
      + `${(limits.pixels / 1e6).toFixed(0)} megapixels.`;
    setStatus(`Ready: model ${body.model_version} on ${body.execution_provider.replace("ExecutionProvider", "")}.`);
  } catch (error) {
    setStatus("The service does not answer yet; retrying…");
    setTimeout(loadServiceInfo, 2000);
  }
}

function choose(file) {
  clearError();
  if (!file) return;
  chosen = file;
  els.fileName.textContent = `${file.name} (${formatBytes(file.size)})`;
  els.enhance.disabled = false;
  if (limits.bytes !== null && file.size > limits.bytes) {
    showError(`This file is ${formatBytes(file.size)}; the service accepts up to ${formatBytes(limits.bytes)}. `
      + "It will be refused: choose a smaller file.");
  }
}

function strengthValue() { return els.auto.checked ? "auto" : els.strength.value; }

function enhancedName(original, contentType) {
  const stem = original.replace(/\.[^.]*$/, "") || "photo";
  return `${stem}-enhanced.${EXTENSIONS[contentType] || "png"}`;
}

function describeDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => `${(item.loc || []).filter((part) => part !== "body").join(".")}: ${item.msg}`).join("; ");
  }
  return "unexpected answer";
}

function errorMessage(xhr) {
  let body = null;
  try { body = JSON.parse(new TextDecoder().decode(xhr.response)); } catch (ignored) { body = null; }
  const detail = body ? describeDetail(body.detail) : "";
  const retry = xhr.getResponseHeader("Retry-After");
  switch (xhr.status) {
    case 400: return `The file could not be read as an image: ${detail}`;
    case 413: return body && body.error === "too_slow_for_deadline"
      ? `This photo is too large for this server to finish in time: ${detail}`
      : `The photo is too large: ${detail}`;
    case 415: return `This format is not supported: ${detail}`;
    case 422: return `A setting was not accepted: ${detail}`;
    case 503: return `The service is busy${retry ? `; try again in ${retry} s` : ""}. ${detail}`;
    case 504: return `The service took too long and gave up: ${detail}`;
    case 0: return "The connection to the service was lost.";
    default: return `The service answered ${xhr.status}: ${detail || xhr.statusText}`;
  }
}

function startTimer() {
  const started = performance.now();
  els.elapsed.textContent = "";
  timer = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    const phase = els.progress.value < 1 ? "uploading" : "enhancing";
    els.elapsed.textContent = `${phase}… ${seconds.toFixed(0)} s`;
  }, 250);
}

function finish() {
  clearInterval(timer);
  request = null;
  els.enhance.disabled = chosen === null;
  els.cancel.hidden = true;
  els.progress.hidden = true;
}

function releaseUrls() {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
}

function track(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.push(url);
  return url;
}

function post(file, fields) {
  const form = new FormData();
  form.append("image", file, file.name);
  Object.entries(fields).forEach(([key, value]) => { if (value !== "") form.append(key, value); });
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "enhance");
  xhr.responseType = "arraybuffer";
  return { xhr, form };
}

// The browser cannot show every upload (TIFF, HEIC): then the service's strength=0 answer, an upright PNG
// of the upload itself, is the "before" picture.
function showOriginal(file) {
  els.before.onerror = () => {
    els.before.onerror = null;
    const { xhr, form } = post(file, { strength: "0", format: "png" });
    xhr.onload = () => { if (xhr.status === 200) els.before.src = track(new Blob([xhr.response], { type: "image/png" })); };
    xhr.send(form);
  };
  els.before.src = track(file);
}

// strength=auto answers a photo that is already as bright as its target with the photo itself.
const UNCHANGED_NOTE = " It is already as bright as the automatic setting aims for, so it came back unchanged; "
  + "untick Automatic and raise the strength to apply the model anyway.";

function showResult(xhr, file, requestedStrength) {
  const type = (xhr.getResponseHeader("Content-Type") || "image/png").split(";")[0];
  const blob = new Blob([xhr.response], { type });
  const url = track(blob);
  els.after.src = url;
  showOriginal(file);
  els.download.href = url;
  els.download.download = enhancedName(file.name, type);
  els.download.textContent = `Download ${els.download.download}`;
  const rows = [
    ["Model", xhr.getResponseHeader("X-Model-Version")],
    ["Runs on", (xhr.getResponseHeader("X-Execution-Provider") || "").replace("ExecutionProvider", "")],
    ["Processing time", `${(Number(xhr.getResponseHeader("X-Inference-Time-Ms")) / 1000).toFixed(2)} s of model time`],
    ["Strength applied", xhr.getResponseHeader("X-Strength")],
    ["Brightened since capture (gain read from its noise)", xhr.getResponseHeader("X-Digital-Gain")],
    ["Exposure gain before the model", xhr.getResponseHeader("X-Exposure-Gain")],
    ["Tiling", xhr.getResponseHeader("X-Tile-Plan")],
    ["Model passes averaged (flipped copies)", xhr.getResponseHeader("X-Ensemble-Passes")],
    ["Result", `${type}, ${formatBytes(blob.size)}`],
  ];
  els.details.replaceChildren();
  rows.forEach(([name, value]) => {
    if (value === null || value === "") return;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    els.details.append(dt, dd);
  });
  els.result.hidden = false;
  const unchanged = requestedStrength === "auto" && Number(xhr.getResponseHeader("X-Strength")) === 0;
  els.after.onload = () => setStatus(
    `Done: ${els.after.naturalWidth} × ${els.after.naturalHeight} pixels.${unchanged ? UNCHANGED_NOTE : ""}`,
  );
}

function enhance() {
  if (!chosen || request) return;
  clearError();
  releaseUrls();
  const file = chosen;
  const strength = strengthValue();
  const { xhr, form } = post(file, { strength, format: els.format.value, quality: els.quality.value });
  request = xhr;
  els.enhance.disabled = true;
  els.cancel.hidden = false;
  els.progress.hidden = false;
  els.progress.value = 0;
  xhr.upload.onprogress = (event) => { if (event.lengthComputable) els.progress.value = event.loaded / event.total; };
  xhr.upload.onload = () => { els.progress.value = 1; };
  xhr.onload = () => {
    finish();
    if (xhr.status === 200) {
      els.elapsed.textContent = "";
      showResult(xhr, file, strength);
    } else {
      els.elapsed.textContent = "";
      showError(errorMessage(xhr));
    }
  };
  xhr.onerror = () => { finish(); showError("The connection to the service was lost."); };
  xhr.onabort = () => { finish(); els.elapsed.textContent = "Cancelled."; };
  startTimer();
  setStatus(`Enhancing ${file.name}…`);
  xhr.send(form);
}

function reveal() {
  const share = `${els.reveal.value}%`;
  els.clip.style.width = share;
  els.divider.style.left = share;
}

els.drop.addEventListener("click", () => els.file.click());
els.drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); els.file.click(); }
});
els.drop.addEventListener("dragover", (event) => { event.preventDefault(); els.drop.classList.add("dragging"); });
els.drop.addEventListener("dragleave", () => els.drop.classList.remove("dragging"));
els.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  els.drop.classList.remove("dragging");
  choose(event.dataTransfer.files[0]);
});
els.file.addEventListener("change", () => choose(els.file.files[0]));
els.auto.addEventListener("change", () => { els.strength.disabled = els.auto.checked; });
els.strength.addEventListener("input", () => { els.strengthValue.textContent = Number(els.strength.value).toFixed(2); });
els.enhance.addEventListener("click", enhance);
els.cancel.addEventListener("click", () => { if (request) request.abort(); });
els.reveal.addEventListener("input", reveal);
reveal();
loadServiceInfo();
