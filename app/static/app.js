/* Loupe try-it page. Plain JS, no framework, nothing loaded from outside this server. */
"use strict";

(() => {
  const KEY_STORAGE = "loupe.apiKey";
  const BATCH = 8; // images per /v1/analyze/batch request
  const DEFAULT_ON = new Set(["run_blur", "run_exposure", "run_quality"]);
  const FALLBACK_OPS = [ // shown when /v1/operations cannot be read (e.g. the key is missing)
    ["blur", "run_blur", "Variance of the Laplacian."], ["exposure", "run_exposure", "Brightness and clipping."],
    ["quality", "run_quality", "0–1 quality score."], ["aesthetic", "run_aesthetic", "NIMA aesthetic."],
    ["embedding", "run_embedding", "CLIP image embedding."], ["faces", "run_faces", "Face boxes."],
    ["emotion", "run_emotion", "Emotion per face."],
  ].map(([name, flag, description]) => ({ name, flag, description, state: "unknown" }));
  const BAND_LABEL = { very_poor: "Very poor", poor: "Poor", decent: "Decent", good: "Good", excellent: "Excellent" };
  const BAND_ORDER = ["very_poor", "poor", "decent", "good", "excellent"];
  const OP_TITLES = { blur: "Sharpness (blur)", exposure: "Exposure", quality: "Quality score", aesthetic: "Aesthetic",
    embedding: "Embedding (CLIP)", faces: "Faces", emotion: "Emotion" };

  const $ = (sel, root = document) => root.querySelector(sel);
  const state = { items: [], nextId: 1, busy: false, opsLoaded: false, regionsBlocked: "" };
  // Regions: one POST /v1/tasks per photo (the person box, the face box, the top tags of the whole photo)
  const REGION_TASKS = [
    { operation_id: "person", type: "detect_bounding_box", params: { target: "prominent_person" } },
    { operation_id: "face", type: "detect_bounding_box", params: { target: "prominent_face" } },
    { operation_id: "tags", type: "tag_imagenet", params: { target: "whole_image", top: 5, minconf: 0.05 } },
  ];
  const REGION_NEEDS = { detect_bounding_box: "the person model", tag_imagenet: "the ImageNet tags model" };

  /* ---------- small DOM helper ---------- */
  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const fmt = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
  const pct = (v, d = 1) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(d)} %`);

  /* ---------- API ---------- */
  class LoupeError extends Error {
    constructor(status, type, message, detail, requestId) {
      super(message);
      Object.assign(this, { status, type, detail, requestId });
    }
  }

  function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const key = apiKey();
    if (key) headers["X-Api-Key"] = key;
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new LoupeError(0, "network_error", "The Loupe server could not be reached. Check that it is running and try again.");
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const e = data && data.error ? data.error : {};
      throw new LoupeError(resp.status, e.type || "http_error", e.message || `The server answered HTTP ${resp.status}.`,
        e.detail, e.request_id || resp.headers.get("x-request-id"));
    }
    return data;
  }

  /* ---------- errors in words ---------- */
  const HINTS = {
    unauthorized: "Enter a valid API key in the “API key” field, then try again.",
    rate_limited: "Too many requests in a short time: wait a little and try again.",
    payload_too_large: "Send fewer or smaller photos at once.",
    image_too_large: "Use a smaller photo (fewer pixels or a smaller file).",
    unsupported_media_type: "Use a JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF or camera RAW (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2 …) image.",
    invalid_image: "The file looks damaged: try exporting it again.",
    url_not_allowed: "Only public http(s) addresses can be fetched.",
    unreachable_url: "Check the address in a browser tab: it must point straight at an image.",
    upstream_error: "The site holding the image answered with an error.",
    upstream_timeout: "The site holding the image took too long to answer.",
    network_error: "",
    internal_error: "Quote the request id below when reporting the problem.",
  };

  function validationLines(detail) {
    if (!detail || !Array.isArray(detail.errors)) return [];
    return detail.errors.slice(0, 3).map((e) => {
      const where = (e.loc || []).filter((p) => p !== "body").join(" › ");
      return where ? `${where}: ${e.msg}` : e.msg;
    });
  }

  function errorNode(err, title) {
    const type = err.type || "error";
    const lines = validationLines(err.detail);
    const hint = HINTS[type];
    return h("div", { class: "error-words" },
      h("p", {}, h("strong", {}, title ? `${title}: ` : ""), err.message || "Something went wrong."),
      lines.length > 1 ? h("ul", {}, lines.map((l) => h("li", { text: l }))) : null,
      hint ? h("p", { class: "hint", text: hint }) : null,
      h("p", { class: "muted small" }, `Error type: ${type.replace(/_/g, " ")}`,
        err.requestId ? ` · request id ${err.requestId}` : "", err.status ? ` · HTTP ${err.status}` : ""));
  }

  function showAlert(err, title) {
    const box = $("#alert");
    box.replaceChildren(errorNode(err, title));
    box.hidden = false;
    if (err.type === "unauthorized") $("#apikey").focus();
  }
  function clearAlert() { $("#alert").hidden = true; $("#alert").replaceChildren(); }
  function setStatus(text) { $("#status").textContent = text; }

  /* ---------- operations ---------- */
  function opState(op) {
    if (op.state) return op.state;
    if (op.ready) return "ready";
    if (op.available) return "available";
    return "missing";
  }
  const STATE_TEXT = { ready: "ready", available: "available", missing: "missing", unknown: "unknown" };
  const STATE_TITLE = {
    ready: "Loaded and ready.",
    available: "Its model loads on first use (the first request is slower).",
    missing: "Its model files are not installed on this instance: results say it is unavailable rather than guess.",
    unknown: "Could not ask this instance (see the message above).",
  };

  function missingNote(op) {
    if (op.name === "quality") return "Some of its models are not installed here: the score uses what is (at least blur and exposure).";
    return "Its model files are not installed here: results will say it is unavailable.";
  }

  function renderOps(ops) {
    const box = $("#ops");
    const checked = new Set([...box.querySelectorAll("input[type=checkbox]")].filter((c) => c.checked).map((c) => c.value));
    const keep = box.querySelectorAll("input[type=checkbox]").length > 0;
    box.replaceChildren(h("legend", { class: "visually-hidden", text: "Analyses to run" }));
    for (const op of ops.filter((o) => o.flag)) {
      const st = opState(op);
      const id = `op-${op.flag}`;
      const on = keep ? checked.has(op.flag) : DEFAULT_ON.has(op.flag);
      box.append(h("div", { class: "op" },
        h("input", { type: "checkbox", id, value: op.flag, name: "flags", checked: on, "aria-describedby": `${id}-d` }),
        h("label", { for: id }, h("span", { class: "op-name", text: OP_TITLES[op.name] || op.name }),
          h("span", { class: `state ${st}`, title: STATE_TITLE[st], text: STATE_TEXT[st] })),
        h("p", { id: `${id}-d`, class: "op-desc muted small", text: `${op.description}${st === "missing" ? " " + missingNote(op) : ""}` })));
    }
  }

  async function loadOps() {
    try {
      const data = await api("GET", "/v1/operations");
      renderOps(data.operations || []);
      regionsReadiness(data.tasks, data.operations);
      state.opsLoaded = true;
    } catch (err) {
      renderOps(FALLBACK_OPS);
      regionsReadiness(null);
      showAlert(err, err.type === "unauthorized" ? "This Loupe instance needs an API key" : "Could not list the analyses");
    }
  }

  function flags() {
    const out = {};
    for (const c of document.querySelectorAll("#ops input[type=checkbox]")) out[c.value] = c.checked;
    return out;
  }

  /* ---------- regions readiness (from GET /v1/operations → tasks) ---------- */
  function regionsReadiness(tasks, ops) {
    const why = $("#regions-why");
    let blocked = "";
    let note = "";
    if (tasks === null) {
      note = "Could not ask this instance whether it has the person and tags models (see the message above).";
    } else if (!Array.isArray(tasks) || !tasks.length) {
      blocked = "Not available: this instance does not offer POST /v1/tasks.";
    } else {
      const byType = new Map(tasks.map((t) => [t.type, t]));
      const missing = Object.keys(REGION_NEEDS).filter((t) => !byType.has(t) || !byType.get(t).available);
      const faces = (ops || []).find((o) => o.name === "faces");
      const needs = { ...REGION_NEEDS };
      if (faces && !faces.available) needs.detect_bounding_box = "the person model or the face detector";
      if (missing.length) {
        const what = missing.map((t) => `${needs[t]} (${t})`).join(" and ");
        blocked = `Not available on this instance: ${what} ${missing.length > 1 ? "are" : "is"} not installed, ` +
          "as GET /v1/operations says.";
      } else if (Object.keys(REGION_NEEDS).some((t) => !byType.get(t).ready)) {
        note = "Its models load on first use: the first photo takes longer.";
      }
    }
    state.regionsBlocked = blocked;
    why.textContent = blocked || note;
    why.hidden = !(blocked || note);
    why.classList.toggle("blocked", Boolean(blocked));
    updateButtons();
  }

  function updateButtons() {
    $("#run").disabled = state.busy;
    const regions = $("#regions");
    regions.disabled = state.busy || Boolean(state.regionsBlocked);
    regions.title = state.regionsBlocked || "";
  }

  function setBusy(busy, button) {
    state.busy = busy;
    if (busy) button.setAttribute("aria-busy", "true"); else button.removeAttribute("aria-busy");
    updateButtons();
  }

  /* ---------- queue of photos ---------- */
  function uniqueId(name) {
    const taken = new Set(state.items.map((i) => i.imageId));
    if (!taken.has(name)) return name;
    for (let n = 2; ; n += 1) if (!taken.has(`${name} (${n})`)) return `${name} (${n})`;
  }

  function addFiles(fileList) {
    for (const file of fileList) {
      state.items.push({ id: state.nextId++, kind: "file", file, name: file.name || "pasted image",
        imageId: uniqueId(file.name || "pasted image"), src: URL.createObjectURL(file) });
    }
    renderQueue();
  }

  /* Browsers show neither HEIC nor camera RAW: when an image fails to display, Loupe makes a JPEG of it
     (POST /v1/preview, the same reader as the analyses), once per photo. */
  const previews = new Map();
  function serverPreview(it) {
    if (it.kind !== "file") return Promise.resolve(null);
    if (!previews.has(it.id)) {
      const form = new FormData();
      form.append("file", it.file);
      form.append("max_dim", "1024");
      const headers = {};
      const key = apiKey();
      if (key) headers["X-Api-Key"] = key;
      previews.set(it.id, fetch("/v1/preview", { method: "POST", headers, body: form })
        .then((r) => (r.ok ? r.blob() : null)).then((b) => (b ? URL.createObjectURL(b) : null)).catch(() => null));
    }
    return previews.get(it.id);
  }

  function previewOnError(it, hide) {
    return (e) => {
      const img = e.target;
      img.onerror = () => hide(img);
      serverPreview(it).then((url) => {
        if (!url) { hide(img); return; }
        it.src = url;
        img.src = url;
      });
    };
  }

  function removeItem(id) {
    const i = state.items.findIndex((x) => x.id === id);
    if (i >= 0) {
      if (state.items[i].kind === "file") URL.revokeObjectURL(state.items[i].src);
      state.items.splice(i, 1);
    }
    renderQueue();
  }

  function renderQueue() {
    const q = $("#queue");
    q.replaceChildren(...state.items.map((it) => h("li", { class: "chip" },
      h("img", { src: it.src, alt: "", onerror: previewOnError(it, (img) => { img.style.visibility = "hidden"; }) }),
      h("span", { class: "chip-name", text: it.name }),
      h("button", { type: "button", class: "chip-x", "aria-label": `Remove ${it.name}`, onclick: () => removeItem(it.id), text: "×" }))));
    const n = state.items.length;
    setStatus(n ? `${n} photo${n > 1 ? "s" : ""} ready to analyse.` : "");
  }

  function urlItems() {
    const lines = $("#urls").value.split(/\s+/).map((s) => s.trim()).filter(Boolean);
    return lines.map((url) => ({ id: state.nextId++, kind: "url", url, name: url, src: url }));
  }

  function readDataUrl(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(new LoupeError(0, "unreadable_file", `The browser could not read ${file.name}.`));
      r.readAsDataURL(file);
    });
  }

  async function imageInput(it) {
    if (it.kind === "url") return { url: it.url, image_id: it.imageId };
    return { base64: await readDataUrl(it.file), image_id: it.imageId };
  }

  /* ---------- rendering results ---------- */
  function qualityBand(q) {
    if (!q) return null;
    if (q.status !== "ok") return unavailable("Quality", q);
    const band = q.band || "very_poor";
    const bands = (q.thresholds && q.thresholds.bands) || {};
    const scale = h("div", { class: "scale", "aria-hidden": "true" },
      BAND_ORDER.map((b) => {
        const [lo, hi] = bands[b] || [BAND_ORDER.indexOf(b) / 5, (BAND_ORDER.indexOf(b) + 1) / 5];
        return h("span", { class: `seg band-${b}${b === band ? " current" : ""}`, style: { flexGrow: String(Math.max(0.01, hi - lo)) } });
      }),
      h("span", { class: "marker", style: { left: `${Math.min(100, Math.max(0, q.score * 100))}%` } }));
    const comps = (q.components || []).map((c) => h("li", {}, `${c.name.replace(/_/g, " ")}: ${fmt(c.score, 2)} `,
      h("span", { class: "muted", text: `(raw ${fmt(c.raw, 2)}, weight ${c.weight})` })));
    const missing = Object.entries(q.missing || {}).map(([k, v]) => h("li", { class: "muted" }, `${k.replace(/_/g, " ")}: ${v}`));
    return h("div", { class: "quality" },
      h("div", { class: `band-pill band-${band}` }, h("span", { class: "band-name", text: BAND_LABEL[band] || band }),
        h("span", { class: "band-score", text: `quality ${fmt(q.score, 2)} / 1` })),
      scale,
      h("p", { class: "small muted" }, q.is_ok ? `Passes QUALITY_MIN ${q.thresholds.quality_min}.` : `Below QUALITY_MIN ${q.thresholds.quality_min}.`,
        q.brisque !== null && q.brisque !== undefined ? ` BRISQUE ${fmt(q.brisque, 1)} (lower is better).` : "",
        q.nima_technical !== null && q.nima_technical !== undefined ? ` NIMA technical ${fmt(q.nima_technical, 3)}.` : ""),
      comps.length || missing.length ? h("details", { class: "small" }, h("summary", { text: "How the score is made" }),
        h("ul", {}, comps, missing)) : null);
  }

  function unavailable(title, section) {
    const why = section.error ? section.error.message : "It did not run.";
    const what = section.status === "unavailable" ? "not available on this instance" : "failed for this image";
    return h("div", { class: "unavail" }, title ? h("strong", { text: `${title}: ` }) : null,
      h("span", { class: "tag warn", text: what }),
      h("details", { class: "small" }, h("summary", { text: "why" }), h("span", { class: "muted", text: why })));
  }

  function row(term, ...desc) { return [h("dt", { text: term }), h("dd", {}, ...desc)]; }

  function facesOverlay(result) {
    const w = result.width_px, hgt = result.height_px;
    if (!w || !hgt) return [];
    const boxes = [];
    const faces = result.faces && result.faces.status === "ok" ? result.faces.faces : [];
    const emo = result.emotion && result.emotion.status === "ok" ? result.emotion.faces.slice() : [];
    const iou = (a, b) => {
      const x1 = Math.max(a.x, b.x), y1 = Math.max(a.y, b.y);
      const x2 = Math.min(a.x + a.w, b.x + b.w), y2 = Math.min(a.y + a.h, b.y + b.h);
      const inter = Math.max(0, x2 - x1) * Math.max(0, y2 - y1);
      return inter / (a.w * a.h + b.w * b.h - inter || 1);
    };
    for (const f of faces) {
      let label = `face ${fmt(f.confidence * 100, 0)} %`;
      const k = emo.findIndex((e) => iou(e.box, f.box) > 0.3);
      if (k >= 0) { label = emotionLabel(emo[k]); emo.splice(k, 1); }
      boxes.push([f.box, label]);
    }
    for (const e of emo) boxes.push([e.box, emotionLabel(e)]);
    return boxes.map(([b, label]) => h("div", {
      class: "facebox", role: "img", "aria-label": `Face: ${label}`,
      style: { left: `${(b.x / w) * 100}%`, top: `${(b.y / hgt) * 100}%`, width: `${(b.w / w) * 100}%`, height: `${(b.h / hgt) * 100}%` },
    }, h("span", { class: "facelabel", text: label })));
  }

  function emotionLabel(e) {
    const p = e.emotions && e.emotions[e.dominant_emotion];
    return p !== undefined ? `${e.dominant_emotion} ${fmt(p * 100, 0)} %` : e.dominant_emotion;
  }

  function resultCard(it, result, err) {
    const figure = h("div", { class: "figure" }, h("img", {
      src: it.src, alt: `Photo ${it.name}`, loading: "lazy", onerror: previewOnError(it, (img) => { img.hidden = true; }),
    }));
    const body = h("div", { class: "card-body" }, h("h3", { class: "card-title", title: it.name, text: it.name }));
    const card = h("article", { class: "card", "data-image-id": it.imageId }, figure, body);
    const error = err || (result && result.error);
    if (error) {
      card.classList.add("failed");
      body.append(h("div", { class: "item-error" }, errorNode(err || {
        type: error.type, message: error.message, detail: error.detail, status: error.status_code,
      }, "Could not analyse this image")));
      return card;
    }
    figure.append(...facesOverlay(result));
    body.append(h("p", { class: "muted small", text: `${result.width_px} × ${result.height_px} px · ${result.format || ""} · ${fmt(result.processing_time_ms, 0)} ms` }));
    const qb = qualityBand(result.quality);
    if (qb) body.append(qb);
    const dl = h("dl", { class: "facts" });
    const b = result.blur;
    if (b) {
      if (b.status === "ok") {
        dl.append(...row("Sharpness",
          h("span", { class: b.is_blurry ? "tag bad" : "tag good", text: b.is_blurry ? "blurry" : "sharp" }),
          ` Laplacian variance ${fmt(b.laplacian_variance, 1)} ${b.is_blurry ? "<" : "≥"} threshold ${b.thresholds.blur_threshold}`,
          h("span", { class: "muted", text: ` (at ${b.thresholds.analysis_max_dim} px; sharpness ${fmt(b.sharpness_score, 2)})` })));
      } else dl.append(...row("Sharpness", unavailable("", b)));
    }
    const e = result.exposure;
    if (e) {
      if (e.status === "ok") {
        const t = e.thresholds;
        dl.append(...row("Exposure",
          h("span", { class: e.verdict === "ok" ? "tag good" : "tag bad", text: e.verdict }),
          ` mean brightness ${fmt(e.mean_brightness, 0)} (ok from ${t.bright_min} to ${t.bright_max})`,
          h("br"),
          h("span", { class: "muted", text: `crushed shadows ${pct(e.shadow_clip_fraction)} (max ${pct(t.shadow_clip_max, 0)}), blown highlights ${pct(e.highlight_clip_fraction)} (max ${pct(t.highlight_clip_max, 0)})` })));
      } else dl.append(...row("Exposure", unavailable("", e)));
    }
    const a = result.aesthetic;
    if (a) {
      if (a.status === "ok") {
        dl.append(...row("Aesthetic",
          a.nima_score !== null ? `${fmt(a.nima_score, 2)} / 10` : "",
          a.label ? h("span", { class: "tag", text: a.label }) : "",
          a.laion_score !== null && a.laion_score !== undefined ? ` LAION ${fmt(a.laion_score, 2)} / 10` : ""));
      } else dl.append(...row("Aesthetic", unavailable("", a)));
    }
    const f = result.faces;
    if (f) dl.append(...row("Faces", f.status === "ok" ? `${f.count} face${f.count === 1 ? "" : "s"} found` : unavailable("", f)));
    const em = result.emotion;
    if (em) {
      dl.append(...row("Emotion", em.status === "ok"
        ? (em.count ? em.faces.map(emotionLabel).join(", ") : "no face found")
        : unavailable("", em)));
    }
    const emb = result.embedding;
    if (emb) dl.append(...row("Embedding", emb.status === "ok" ? `${emb.dim}-d vector (${emb.model})` : unavailable("", emb)));
    body.append(dl);
    return card;
  }

  /* ---------- regions ---------- */
  const REGION_LABEL = { person: "Person", face: "Face" };

  function regionBox(kind, box, w, hgt) {
    const [x0, y0, x1, y1] = box.box;
    const label = `${kind} ${fmt(box.score * 100, 0)} %`;
    const top = (y0 / hgt) * 100;
    return h("div", {
      class: `regionbox ${kind}${top < 6 ? " label-inside" : ""}`, role: "img", "aria-label": `${REGION_LABEL[kind]}: ${label}`,
      "data-box": box.box.join(","),
      style: { left: `${(x0 / w) * 100}%`, top: `${top}%`, width: `${((x1 - x0) / w) * 100}%`, height: `${((y1 - y0) / hgt) * 100}%` },
    }, h("span", { class: "regionlabel", text: label }));
  }

  function regionWords(kind, r) {
    // a skipped box task says why in words: "No person found…", "No face found…"
    const msg = (r && r.error_message) || "It did not run.";
    if (r && r.status === "skipped") {
      const lead = kind === "person" ? "No person found" : "No face found";
      return h("span", { class: "region-none", text: msg.toLowerCase().startsWith(lead.toLowerCase()) ? msg : `${lead}: ${msg}` });
    }
    return h("span", {}, h("span", { class: "tag warn", text: "failed" }), ` ${msg}`);
  }

  function tagList(r) {
    if (!r || r.status !== "success") {
      return h("span", {}, h("span", { class: "tag warn", text: "failed" }), ` ${(r && r.error_message) || "It did not run."}`);
    }
    const labels = (r.data && r.data.labels) || [];
    if (!labels.length) {
      return h("span", { class: "muted", text: `No label reaches ${pct(r.data.minconf, 0)} confidence.` });
    }
    return h("ol", { class: "taglist", "aria-label": "ImageNet tags" }, labels.map((l) => h("li", {},
      h("span", { class: "tag-label", text: l.label }),
      h("span", { class: "tag-bar", "aria-hidden": "true" }, h("span", { style: { width: `${Math.max(1, l.confidence * 100)}%` } })),
      h("span", { class: "tag-conf", text: pct(l.confidence, 1) }))));
  }

  function regionsCard(it, resp, err) {
    const figure = h("div", { class: "figure" }, h("img", {
      src: it.src, alt: `Photo ${it.name}`, onerror: previewOnError(it, (img) => { img.hidden = true; }),
    }));
    const body = h("div", { class: "card-body" }, h("h3", { class: "card-title", title: it.name, text: it.name }));
    const card = h("article", { class: "card regions-card", "data-image-id": it.imageId }, figure, body);
    if (err) {
      card.classList.add("failed");
      body.append(h("div", { class: "item-error" }, errorNode(err, "Could not find the regions of this image")));
      return card;
    }
    const res = resp.results || {};
    const w = resp.width_px, hgt = resp.height_px;
    const person = res.person, face = res.face;
    const found = (r) => r && r.status === "success" && r.data && Array.isArray(r.data.box);
    if (w && hgt) {
      if (found(person)) figure.append(regionBox("person", person.data, w, hgt));
      if (found(face)) figure.append(regionBox("face", face.data, w, hgt));
    }
    body.append(h("p", { class: "muted small", text: `${w} × ${hgt} px · boxes in original pixels [x min, y min, x max, y max]` }));
    const dl = h("dl", { class: "facts" });
    const swatch = (kind) => h("span", { class: `swatch ${kind}`, "aria-hidden": "true" });
    const share = (r) => (r.data.area_share !== undefined && r.data.area_share !== null ? `, ${pct(r.data.area_share, 0)} of the photo` : "");
    dl.append(...row("Person", swatch("person"), found(person)
      ? h("span", { class: "region-found", text: `[${person.data.box.join(", ")}] · confidence ${pct(person.data.score, 0)}${share(person)}` })
      : regionWords("person", person)));
    const faceDesc = found(face)
      ? [h("span", { class: "region-found", text: `[${face.data.box.join(", ")}] · confidence ${pct(face.data.score, 0)}${share(face)}` }),
        face.cropped_image_base64 ? h("img", { class: "crop", src: `data:image/png;base64,${face.cropped_image_base64}`, alt: `Face cut from ${it.name}` }) : null]
      : [regionWords("face", face)];
    dl.append(...row("Face", swatch("face"), ...faceDesc));
    dl.append(...row("Tags", tagList(res.tags)));
    body.append(dl);
    return card;
  }

  async function runRegions() {
    if (state.busy || state.regionsBlocked) return;
    clearAlert();
    const items = gatherItems();
    if (!items) return;
    setBusy(true, $("#regions"));
    const out = $("#regions-out");
    out.replaceChildren();
    $("#regions-section").hidden = false;
    try {
      const inputs = await Promise.all(items.map(imageInput));
      for (let i = 0; i < items.length; i += 1) {
        setStatus(`Finding regions in photo ${i + 1} of ${items.length}…`);
        try {
          const resp = await api("POST", "/v1/tasks", { image: inputs[i], tasks: REGION_TASKS, return_crops: true });
          out.append(regionsCard(items[i], resp, null));
        } catch (err) {
          if (err.status === 0 || err.type === "unauthorized" || err.type === "rate_limited") throw err;
          out.append(regionsCard(items[i], null, err));
        }
      }
      const failed = out.querySelectorAll(".card.failed").length;
      setStatus(`Looked for a person, a face and tags in ${items.length} photo${items.length > 1 ? "s" : ""}` +
        `${failed ? `, ${failed} could not be read` : ""}.`);
      if (failed < items.length && !state.regionsBlocked) $("#regions-why").hidden = true; // "loads on first use": done
    } catch (err) {
      setStatus("");
      showAlert(err, "Finding regions failed");
    } finally {
      setBusy(false, $("#regions"));
    }
  }

  function groupsView(resp, byId) {
    const out = [];
    const name = (id) => (byId.get(id) ? byId.get(id).name : id);
    const thumb = (id, member) => {
      const it = byId.get(id);
      const best = member && member.is_best;
      return h("figure", { class: `shot${best ? " best" : member ? " rejected" : ""}`, "data-image-id": id },
        best ? h("span", { class: "best-badge", text: "★ Best shot" }) : null,
        h("img", { src: it ? it.src : "", alt: name(id) }),
        h("figcaption", {}, h("span", { class: "shot-name", text: name(id) }),
          member && member.quality_score !== null && member.quality_score !== undefined
            ? h("span", { class: "muted small", text: ` score ${fmt(member.quality_score, 2)}` }) : null,
          member && member.rejected_reason ? h("span", { class: "why small", text: `Rejected: ${member.rejected_reason}` }) : null));
    };
    if (!resp.groups.length) out.push(h("p", { class: "muted", text: "No near-duplicates: every photo is a unique shot." }));
    resp.groups.forEach((g, n) => {
      out.push(h("div", { class: "group", "data-group": g.group_id },
        h("h3", {}, `Group ${n + 1} · ${g.size} shots`, h("span", { class: "muted small", text: ` linked by ${g.linked_by.join(" and ")}` })),
        h("p", { class: "small" }, h("strong", { text: `Best shot: ${name(g.best_image_id)}. ` }), g.reason),
        h("div", { class: "shots" }, g.members.map((m) => thumb(m.image_id, m)))));
    });
    if (resp.singletons.length) {
      out.push(h("div", { class: "group singles" }, h("h3", { text: "Unique shots" }),
        h("div", { class: "shots" }, resp.singletons.map((id) => thumb(id, null)))));
    }
    if (resp.failed && resp.failed.length) {
      out.push(h("div", { class: "group" }, h("h3", { text: "Not grouped" }),
        h("ul", {}, resp.failed.map((f) => h("li", {}, `${name(f.image_id)}: ${f.error.message}`)))));
    }
    return out;
  }

  /* ---------- run ---------- */
  function gatherItems() {
    const items = [...state.items, ...urlItems()];
    for (const it of items) if (!it.imageId) it.imageId = uniqueId(it.name);
    if (!items.length) {
      showAlert({ type: "no_input", message: "Add a photo or paste an image URL first." }, "Nothing to analyse");
      return null;
    }
    return items;
  }

  async function run() {
    if (state.busy) return;
    clearAlert();
    const items = gatherItems();
    if (!items) return;
    const f = flags();
    if (!Object.values(f).some(Boolean)) {
      showAlert({ type: "no_analysis", message: "Tick at least one analysis." }, "Nothing to run");
      return;
    }
    setBusy(true, $("#run"));
    const results = $("#results");
    results.replaceChildren();
    $("#groups-section").hidden = true;
    $("#groups").replaceChildren();
    const byId = new Map(items.map((it) => [it.imageId, it]));
    let inputs;
    try {
      inputs = await Promise.all(items.map(imageInput));
      let done = 0;
      for (let i = 0; i < items.length; i += BATCH) {
        const chunk = items.slice(i, i + BATCH);
        setStatus(`Analysing ${done + 1}–${done + chunk.length} of ${items.length}…`);
        try {
          const data = await api("POST", "/v1/analyze/batch", { images: inputs.slice(i, i + BATCH), ...f });
          data.results.forEach((r, k) => results.append(resultCard(chunk[k], r, null)));
        } catch (err) {
          if (err.status === 0 || err.type === "unauthorized" || err.type === "rate_limited") throw err;
          chunk.forEach((it) => results.append(resultCard(it, null, err)));
        }
        done += chunk.length;
      }
      const failed = results.querySelectorAll(".card.failed").length;
      setStatus(`Analysed ${items.length} photo${items.length > 1 ? "s" : ""}${failed ? `, ${failed} could not be read` : ""}.`);
      if (items.length >= 2) await runCluster(items, inputs, byId);
    } catch (err) {
      setStatus("");
      showAlert(err, "The analysis failed");
    } finally {
      setBusy(false, $("#run"));
    }
  }

  async function runCluster(items, inputs, byId) {
    setStatus(`Looking for near-duplicates among ${items.length} photos…`);
    const section = $("#groups-section");
    try {
      const resp = await api("POST", "/v1/cluster/images", { images: inputs, rank_by_quality_models: true });
      $("#groups").replaceChildren(...groupsView(resp, byId));
      section.hidden = false;
      const n = resp.groups.length;
      setStatus(`Analysed ${items.length} photos: ${n} group${n === 1 ? "" : "s"} of near-duplicates, ${resp.singletons.length} unique.`);
    } catch (err) {
      $("#groups").replaceChildren(errorNode(err, err.status === 404 ? "This instance cannot group photos" : "Grouping failed"));
      section.hidden = false;
      setStatus("Analysed; grouping failed (see below).");
    }
  }

  function clearAll() {
    for (const it of state.items) if (it.kind === "file") URL.revokeObjectURL(it.src);
    state.items = [];
    $("#urls").value = "";
    $("#file").value = "";
    $("#results").replaceChildren(h("p", { class: "muted empty", text: "Cleared." }));
    $("#groups-section").hidden = true;
    $("#regions-section").hidden = true;
    $("#regions-out").replaceChildren();
    clearAlert();
    renderQueue();
  }

  /* ---------- wiring ---------- */
  function init() {
    const drop = $("#drop");
    const input = $("#file");
    drop.addEventListener("click", () => input.click());
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
    input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files); });
    document.addEventListener("paste", (e) => {
      const files = [...((e.clipboardData && e.clipboardData.files) || [])].filter((f) => f.type.startsWith("image/"));
      if (files.length) { e.preventDefault(); addFiles(files); }
    });
    $("#run").addEventListener("click", run);
    $("#regions").addEventListener("click", runRegions);
    $("#clear").addEventListener("click", clearAll);
    const key = $("#apikey");
    key.value = apiKey();
    key.addEventListener("change", () => {
      const v = key.value.trim();
      if (v) sessionStorage.setItem(KEY_STORAGE, v); else sessionStorage.removeItem(KEY_STORAGE);
      clearAlert();
      loadOps();
    });
    $("#forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORAGE); key.value = ""; loadOps(); });
    fetch("/v1/version").then((r) => (r.ok ? r.json() : null)).then((v) => {
      if (v) $("#version").textContent = `Loupe ${v.version} · API ${v.api_version}`;
    }).catch(() => {});
    loadOps();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
