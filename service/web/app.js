// FRLIE web page: each photo dropped becomes a job (POST /jobs) with its own progress bar, ETA and
// cancel button; finished ones can be compared before/after and downloaded.
// Everything user-provided (file names, error texts) is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  status: $("status"), drop: $("drop-zone"), file: $("file-input"), fileName: $("file-name"), limits: $("limits"),
  auto: $("strength-auto"), strength: $("strength"), strengthValue: $("strength-value"),
  format: $("format"), quality: $("quality"), enhance: $("enhance"), queue: $("queue"), error: $("error"),
  result: $("result-section"), before: $("before"), after: $("after"), clip: $("before-clip"),
  divider: $("divider"), reveal: $("reveal"), download: $("download"), details: $("details"),
};
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/avif": "avif" };
let limits = { bytes: null, pixels: null };
let chosen = [];          // the Files to enhance
let objectUrls = [];
const POLL_MS = 500;      // how often a job's progress is asked for

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

function choose(files) {
  clearError();
  if (!files || files.length === 0) return;
  chosen = Array.from(files);
  els.fileName.textContent = chosen.map((file) => `${file.name} (${formatBytes(file.size)})`).join(", ");
  els.enhance.disabled = false;
  const tooBig = chosen.filter((file) => limits.bytes !== null && file.size > limits.bytes);
  if (tooBig.length > 0) {
    showError(`${tooBig.map((file) => `${file.name} is ${formatBytes(file.size)}`).join(", ")}; the service `
      + `accepts up to ${formatBytes(limits.bytes)}. It will be refused: choose a smaller file.`);
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
  return messageFor(xhr.status, body, xhr.getResponseHeader("Retry-After"), xhr.statusText);
}

// A failed job carries the error body /enhance would have answered with, without its status.
const ERROR_STATUS = {
  invalid_image: 400, payload_too_large: 413, too_slow_for_deadline: 413, unsupported_format: 415,
  invalid_parameters: 422, overloaded: 503, timeout: 504,
};

function jobErrorMessage(error) {
  if (error && error.error === "job_lost") return `The server running it stopped: ${describeDetail(error.detail)}`;
  return messageFor(ERROR_STATUS[error && error.error] || 500, error, null, "");
}

function messageFor(status, body, retry, statusText) {
  const detail = body ? describeDetail(body.detail) : "";
  switch (status) {
    case 400: return `The file could not be read as an image: ${detail}`;
    case 413: return body && body.error === "too_slow_for_deadline"
      ? `This photo is too large for this server to finish in time: ${detail}`
      : `The photo is too large: ${detail}`;
    case 415: return `This format is not supported: ${detail}`;
    case 422: return `A setting was not accepted: ${detail}`;
    case 503: return `The service is busy${retry ? `; try again in ${retry} s` : ""}. ${detail}`;
    case 504: return `The service took too long and gave up: ${detail}`;
    case 0: return "The connection to the service was lost.";
    default: return `The service answered ${status}: ${detail || statusText}`;
  }
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

function post(file, fields, route = "enhance") {
  const form = new FormData();
  form.append("image", file, file.name);
  Object.entries(fields).forEach(([key, value]) => { if (value !== "") form.append(key, value); });
  const xhr = new XMLHttpRequest();
  xhr.open("POST", route);
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
  releaseUrls();  // the photo shown before this one
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

// One photo's job: its row in the queue, from upload to result (or error, or cancel).
class Job {
  constructor(file, fields) {
    this.file = file;
    this.fields = fields;
    this.id = null;
    this.upload = null;       // the POST /jobs request while the photo is sent
    this.over = false;
    this.row = document.createElement("li");
    this.name = document.createElement("span");
    this.name.className = "job-name";
    this.name.textContent = file.name;
    this.bar = document.createElement("progress");
    this.bar.max = 1;
    this.bar.setAttribute("aria-label", `Progress of ${file.name}`);
    this.state = document.createElement("span");
    this.state.className = "job-state";
    this.cancelButton = document.createElement("button");
    this.cancelButton.type = "button";
    this.cancelButton.className = "job-cancel";
    this.cancelButton.textContent = "Cancel";
    this.cancelButton.addEventListener("click", () => this.cancel());
    this.row.append(this.name, this.bar, this.state, this.cancelButton);
    els.queue.append(this.row);
  }

  say(text) { this.state.textContent = text; }

  start() {
    const { xhr, form } = post(this.file, this.fields, "jobs");
    this.upload = xhr;
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) this.say(`uploading ${Math.round((100 * event.loaded) / event.total)}%`);
    };
    xhr.onload = () => {
      this.upload = null;
      if (xhr.status !== 202) { this.fail(errorMessage(xhr)); return; }
      const job = JSON.parse(new TextDecoder().decode(xhr.response));
      this.id = job.id;
      this.row.dataset.jobId = job.id;
      this.show(job);
      this.poll();
    };
    xhr.onerror = () => this.fail("The connection to the service was lost.");
    xhr.onabort = () => this.end("cancelled");
    this.say("uploading");
    xhr.send(form);
  }

  show(job) {
    this.bar.value = job.progress;
    this.row.dataset.status = job.status;
    const percent = `${Math.floor(job.progress * 100)}%`;
    if (job.status === "queued") this.say("queued, waiting for the model");
    else if (job.status === "running") {
      const eta = job.eta_s === null ? "" : `, about ${Math.max(1, Math.round(job.eta_s))} s left`;
      this.say(`enhancing ${percent}${eta}`);
    }
  }

  async poll() {
    if (this.over) return;
    let job = null;
    try {
      const response = await fetch(`jobs/${this.id}`, { cache: "no-store" });
      job = await response.json();
      if (!response.ok) { this.fail(messageFor(response.status, job, null, response.statusText)); return; }
    } catch (error) {
      setTimeout(() => this.poll(), POLL_MS * 4);  // a restart or a blip: keep asking
      return;
    }
    if (this.over) return;
    this.show(job);
    if (job.status === "done") this.fetchResult();
    else if (job.status === "failed") this.fail(jobErrorMessage(job.error));
    else if (job.status === "cancelled") this.end("cancelled");
    else setTimeout(() => this.poll(), POLL_MS);
  }

  fetchResult() {
    const xhr = new XMLHttpRequest();
    xhr.open("GET", `jobs/${this.id}/result`);
    xhr.responseType = "arraybuffer";
    xhr.onload = () => {
      if (xhr.status !== 200) { this.fail(errorMessage(xhr)); return; }
      this.end("done");
      this.bar.value = 1;
      const strength = this.fields.strength;
      const showButton = document.createElement("button");
      showButton.type = "button";
      showButton.className = "job-show";
      showButton.textContent = "Show";
      showButton.addEventListener("click", () => showResult(xhr, this.file, strength));
      this.row.append(showButton);
      showResult(xhr, this.file, strength);
    };
    xhr.onerror = () => this.fail("The connection to the service was lost.");
    xhr.send();
  }

  cancel() {
    if (this.over) return;
    if (this.upload) { this.upload.abort(); return; }
    if (this.id) {
      fetch(`jobs/${this.id}`, { method: "DELETE" }).then(() => this.end("cancelled"), () => this.end("cancelled"));
    }
  }

  end(status) {
    this.over = true;
    this.row.dataset.status = status;
    this.cancelButton.hidden = true;
    if (status === "done") this.say("done");
    if (status === "cancelled") this.say("cancelled");
  }

  fail(message) {
    this.end("failed");
    this.say("failed");
    showError(`${this.file.name}: ${message}`);
  }
}

function enhance() {
  if (chosen.length === 0) return;
  clearError();
  const fields = { strength: strengthValue(), format: els.format.value, quality: els.quality.value };
  chosen.forEach((file) => new Job(file, fields).start());
  setStatus(chosen.length === 1 ? `Enhancing ${chosen[0].name}…` : `Enhancing ${chosen.length} photos…`);
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
  choose(event.dataTransfer.files);
});
els.file.addEventListener("change", () => choose(els.file.files));
els.auto.addEventListener("change", () => { els.strength.disabled = els.auto.checked; });
els.strength.addEventListener("input", () => { els.strengthValue.textContent = Number(els.strength.value).toFixed(2); });
els.enhance.addEventListener("click", enhance);
els.reveal.addEventListener("input", reveal);
reveal();
loadServiceInfo();
