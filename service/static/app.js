// dermserve upload page: a plain client of the public API (GET /model, POST /predict).
// No build step, no external resources. Each chosen file is sent in its own multipart request
// (file part "images"), so one unusable file does not reject the others.
"use strict";

(function () {
  const KEY_STORAGE = "dermserve.apiKey";
  const MAX_PARALLEL = 3;

  // Fallback display names (HAM10000), used only until / unless GET /model answers.
  const DEFAULT_CLASSES = [
    { code: "akiec", name: "Actinic keratoses / intraepithelial carcinoma", malignant: true },
    { code: "bcc", name: "Basal cell carcinoma", malignant: true },
    { code: "bkl", name: "Benign keratosis-like lesions", malignant: false },
    { code: "df", name: "Dermatofibroma", malignant: false },
    { code: "mel", name: "Melanoma", malignant: true },
    { code: "nv", name: "Melanocytic nevi", malignant: false },
    { code: "vasc", name: "Vascular lesions", malignant: false },
  ];

  // reason codes of ImageError (schemas/api.py) in plain words
  const IMAGE_REASONS = {
    empty: "the file is empty",
    not_an_image: "not an image",
    truncated: "the image file is damaged or incomplete",
    too_many_pixels: "the image is too large (too many pixels)",
    too_small: "the image is too small",
    bad_aspect_ratio: "the image is too long and narrow",
    unsupported_mode: "unsupported image colour format",
    invalid_base64: "the image data could not be read",
    not_a_file: "not a file",
    bad_tensor: "the image data could not be read",
  };

  const $ = (id) => document.getElementById(id);
  const els = {};
  let model = null; // GET /model answer
  let queue = [];
  let running = 0;
  let waitingForKey = []; // jobs that got a 401
  const jobs = [];

  function getKey() {
    try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch (e) { return ""; }
  }
  function setKey(value) {
    try {
      if (value) sessionStorage.setItem(KEY_STORAGE, value); else sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) { /* storage disabled: the key lives only in this page */ }
    memoryKey = value;
  }
  let memoryKey = "";
  function authHeaders() {
    const key = getKey() || memoryKey;
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function pct(p) {
    return (p * 100).toFixed(1) + "%";
  }

  function classList() {
    return (model && model.classes && model.classes.length) ? model.classes : DEFAULT_CLASSES;
  }
  function className(code) {
    const c = classList().find((x) => x.code === code);
    return c ? c.name : code;
  }
  function malignantCodes() {
    if (model && model.referral && model.referral.malignant_classes) return model.referral.malignant_classes;
    return DEFAULT_CLASSES.filter((c) => c.malignant).map((c) => c.code);
  }

  function showModelName(name, version) {
    els.modelName.textContent = name + " " + version;
  }

  async function readJson(response) {
    try { return await response.json(); } catch (e) { return null; }
  }

  // ---------------------------------------------------------------- model info
  let modelRetry = null;
  async function loadModel() {
    clearTimeout(modelRetry);
    let r;
    try {
      r = await fetch("/model", { headers: authHeaders(), cache: "no-store" });
    } catch (e) {
      els.modelName.textContent = "service unreachable";
      modelRetry = setTimeout(loadModel, 5000);
      return;
    }
    if (r.ok) {
      model = await readJson(r);
      if (model) showModelName(model.name, model.version);
      return;
    }
    if (r.status === 401) {
      els.modelName.textContent = "API key needed";
      askForKey(getKey() ? "The saved API key was not accepted. Enter a valid key." : null);
      return;
    }
    if (r.status === 503) {
      els.modelName.textContent = "starting, not ready yet";
      modelRetry = setTimeout(loadModel, 3000);
      return;
    }
    els.modelName.textContent = "unavailable (HTTP " + r.status + ")";
  }

  // ---------------------------------------------------------------- API key
  function askForKey(message) {
    els.auth.hidden = false;
    if (message) els.authMessage.textContent = message;
    if (document.activeElement !== els.keyInput) els.keyInput.focus();
  }

  function onKeySubmit(ev) {
    ev.preventDefault();
    const key = els.keyInput.value.trim();
    if (!key) return;
    setKey(key);
    els.keyInput.value = "";
    els.auth.hidden = true;
    loadModel();
    const retry = waitingForKey;
    waitingForKey = [];
    retry.forEach(enqueue);
  }

  // ---------------------------------------------------------------- errors in plain words
  function describeError(status, body, headers, filename) {
    const detail = body && Array.isArray(body.detail) ? body.detail : [];
    if (status === 422 && detail.length && detail[0].reason) {
      return detail.map((d) => filename + ": " + (IMAGE_REASONS[d.reason] || d.message || d.reason)).join("; ");
    }
    if (status === 413) return filename + ": request too large (the file is bigger than the service accepts)";
    if (status === 503) {
      const after = headers.get("Retry-After");
      return "Service busy, try again" + (after ? " in " + after + " s" : " in a moment") + ".";
    }
    if (status === 504) return "The service took too long to answer, try again.";
    if (status === 415) return filename + ": this file type cannot be sent";
    if (status === 401) return "API key needed: enter a valid key above.";
    if (status === 422) return filename + ": the service could not use this file";
    if (status >= 500) return "The service failed to analyse " + filename + " (server error). Try again later.";
    const msg = body && body.error ? body.error : "HTTP " + status;
    return filename + ": " + msg;
  }

  // ---------------------------------------------------------------- cards
  function makeCard(file) {
    const node = els.template.content.firstElementChild.cloneNode(true);
    const img = node.querySelector(".thumb");
    const url = URL.createObjectURL(file);
    img.alt = "Uploaded image " + file.name;
    img.addEventListener("error", () => {
      img.hidden = true;
      node.querySelector(".thumb-fallback").hidden = false;
    });
    img.src = url;
    node.querySelector(".filename").textContent = file.name;
    els.results.appendChild(node);
    return { file, node, url, state: "pending" };
  }

  function setState(job, state) {
    job.state = state;
    job.node.dataset.state = state;
    updateStatus();
  }

  function showError(job, text, retryable) {
    const box = job.node.querySelector(".card-error");
    box.textContent = "";
    const p = document.createElement("p");
    p.className = "error-text";
    p.textContent = text;
    box.appendChild(p);
    if (retryable) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "btn btn-small";
      b.textContent = "Try again";
      b.addEventListener("click", () => enqueue(job));
      box.appendChild(b);
    }
    box.hidden = false;
    job.node.querySelector(".card-status").hidden = true;
    job.node.querySelector(".card-result").hidden = true;
    setState(job, "error");
  }

  function renderPrediction(job, pred) {
    const n = job.node;
    n.querySelector(".top-code").textContent = pred.label;
    n.querySelector(".top-name").textContent = pred.label_name || className(pred.label);
    n.querySelector(".top-prob").textContent = pct(pred.probability);
    n.dataset.label = pred.label;

    const ood = !!pred.out_of_distribution;
    n.dataset.ood = String(ood);
    const oodBox = n.querySelector(".ood-warning");
    oodBox.hidden = !ood;
    if (ood) {
      n.querySelector(".ood-score").textContent =
        typeof pred.ood_score === "number" ? pred.ood_score.toFixed(2) : "n/a";
      const oodThr = model && model.ood ? model.ood.threshold : null;
      n.querySelector(".ood-threshold").textContent = typeof oodThr === "number" ? oodThr.toFixed(2) : "n/a";
    }

    const ref = n.querySelector(".referral");
    const reasons = n.querySelector(".referral-reasons");
    reasons.textContent = "";
    ref.classList.toggle("refer", !!pred.referral_recommended);
    ref.classList.toggle("no-refer", !pred.referral_recommended);
    n.querySelector(".referral-title").textContent = pred.referral_recommended
      ? "Referral recommended"
      : "No referral flag from the model (clinical judgement still applies)";
    const thr = model && model.referral ? model.referral : null;
    (pred.referral_reasons || []).forEach((r) => {
      const li = document.createElement("li");
      if (r === "malignant_probability_at_or_above_threshold") {
        li.textContent = "Malignant probability " + pct(pred.malignant_probability) +
          " is at or above the referral threshold" +
          (thr ? " of " + pct(thr.malignant_probability_threshold) : "") + ".";
      } else if (r === "out_of_distribution") {
        li.textContent = "The image was not recognised as a dermoscopic image; the model's answer does not apply to it.";
      } else if (r === "top_probability_below_minimum") {
        li.textContent = "The model is uncertain: the top class probability " + pct(pred.probability) +
          " is below the minimum" + (thr ? " of " + pct(thr.min_top_probability) : "") + ".";
      } else {
        li.textContent = r;
      }
      li.dataset.reason = r;
      reasons.appendChild(li);
    });
    reasons.hidden = !reasons.children.length;

    const mal = malignantCodes();
    const malEl = n.querySelector(".malignant");
    malEl.textContent = "";
    const strong = document.createElement("strong");
    strong.textContent = "Malignant probability " + pct(pred.malignant_probability);
    malEl.appendChild(strong);
    malEl.appendChild(document.createTextNode(" (sum of " + mal.join(" + ") + ")"));
    malEl.dataset.value = String(pred.malignant_probability);

    const bars = n.querySelector(".bars");
    bars.textContent = "";
    const entries = Object.entries(pred.probabilities).sort((a, b) => b[1] - a[1]);
    for (const [code, p] of entries) {
      const li = document.createElement("li");
      li.className = "bar-row" + (code === pred.label ? " is-top" : "") + (mal.includes(code) ? " is-malignant" : "");
      li.dataset.code = code;
      li.dataset.probability = String(p);
      const label = document.createElement("span");
      label.className = "bar-label";
      const codeEl = document.createElement("span");
      codeEl.className = "bar-code";
      codeEl.textContent = code;
      const nameEl = document.createElement("span");
      nameEl.className = "bar-name";
      nameEl.textContent = className(code);
      label.append(codeEl, " ", nameEl);
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = Math.max(0, Math.min(100, p * 100)).toFixed(2) + "%";
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = pct(p);
      li.append(label, track, value);
      bars.appendChild(li);
    }

    n.querySelector(".card-status").hidden = true;
    n.querySelector(".card-error").hidden = true;
    n.querySelector(".card-result").hidden = false;
    setState(job, "done");
  }

  // ---------------------------------------------------------------- requests
  async function analyse(job) {
    setState(job, "pending");
    const status = job.node.querySelector(".card-status");
    status.textContent = "Analysing…";
    status.hidden = false;
    job.node.querySelector(".card-error").hidden = true;
    const form = new FormData();
    form.append("images", job.file, job.file.name);
    let r;
    try {
      r = await fetch("/predict", { method: "POST", body: form, headers: authHeaders() });
    } catch (e) {
      showError(job, job.file.name + ": cannot reach the service (check the connection), try again.", true);
      return;
    }
    const body = await readJson(r);
    if (r.ok && body && Array.isArray(body.predictions) && body.predictions.length) {
      if (body.model && !model) showModelName(body.model.name, body.model.version);
      renderPrediction(job, body.predictions[0]);
      return;
    }
    if (r.ok) {
      showError(job, job.file.name + ": the service gave an unexpected answer.", true);
      return;
    }
    if (r.status === 401) {
      waitingForKey.push(job);
      showError(job, describeError(401, body, r.headers, job.file.name), false);
      setState(job, "auth");
      askForKey(getKey() || memoryKey ? "The API key was not accepted. Enter a valid key." : null);
      return;
    }
    const retryable = r.status >= 500 || r.status === 429;
    showError(job, describeError(r.status, body, r.headers, job.file.name), retryable);
  }

  function enqueue(job) {
    setState(job, "queued");
    job.node.querySelector(".card-status").textContent = "Waiting…";
    job.node.querySelector(".card-status").hidden = false;
    job.node.querySelector(".card-error").hidden = true;
    queue.push(job);
    pump();
  }

  function pump() {
    while (running < MAX_PARALLEL && queue.length) {
      const job = queue.shift();
      running += 1;
      analyse(job).finally(() => { running -= 1; pump(); });
    }
  }

  function handleFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    for (const f of files) {
      const job = makeCard(f);
      jobs.push(job);
      enqueue(job);
    }
    els.clear.hidden = false;
  }

  function updateStatus() {
    const live = jobs.filter((j) => j.node.isConnected);
    if (!live.length) { els.status.textContent = ""; return; }
    const done = live.filter((j) => j.state === "done").length;
    const failed = live.filter((j) => j.state === "error" || j.state === "auth").length;
    const busy = live.length - done - failed;
    const parts = [];
    if (busy) parts.push("analysing " + busy + " image" + (busy === 1 ? "" : "s") + "…");
    if (done) parts.push(done + " analysed");
    if (failed) parts.push(failed + " failed");
    els.status.textContent = parts.join(", ").replace(/^./, (c) => c.toUpperCase());
  }

  function clearResults() {
    queue = [];
    waitingForKey = [];
    for (const j of jobs.splice(0)) {
      URL.revokeObjectURL(j.url);
      j.node.remove();
    }
    els.clear.hidden = true;
    updateStatus();
    els.fileInput.focus();
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    Object.assign(els, {
      modelName: $("model-name"), auth: $("auth"), authMessage: $("auth-message"), authForm: $("auth-form"),
      keyInput: $("api-key"), forgetKey: $("forget-key"), dropzone: $("dropzone"), fileInput: $("file-input"),
      status: $("status"), clear: $("clear"), results: $("results"), template: $("card-template"),
    });
    els.authForm.addEventListener("submit", onKeySubmit);
    els.forgetKey.addEventListener("click", () => { setKey(""); els.keyInput.value = ""; loadModel(); });
    els.fileInput.addEventListener("change", () => {
      handleFiles(els.fileInput.files);
      els.fileInput.value = ""; // choosing the same file again fires "change" again
    });
    els.clear.addEventListener("click", clearResults);
    const dz = els.dropzone;
    ["dragenter", "dragover"].forEach((t) => dz.addEventListener(t, (e) => {
      e.preventDefault();
      dz.classList.add("is-over");
    }));
    ["dragleave", "dragend"].forEach((t) => dz.addEventListener(t, () => dz.classList.remove("is-over")));
    dz.addEventListener("drop", (e) => {
      e.preventDefault();
      dz.classList.remove("is-over");
      handleFiles(e.dataTransfer && e.dataTransfer.files);
    });
    // a file dropped outside the zone must not navigate away from the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    loadModel();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
