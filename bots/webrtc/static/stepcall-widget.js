/*
 * stepcall browser call widget.
 *
 * Embed on any site:
 *   <script src="https://BOTS.example.com/widget/stepcall-widget.js" data-bot="front_desk" async></script>
 * adds a floating call button. Options (data-* attributes on the script tag):
 *   data-bot     the bot to call (default: the server's default bot, or ?bot= on the page)
 *   data-mount   CSS selector of an element to render the widget into (no floating button)
 *   data-server  the bot server's base URL (default: where this script was loaded from)
 *   data-label   text of the call button (default "Call")
 *   data-token   a call token (servers with STEPCALL_WIDGET_SECRET; mint it with
 *                POST /webrtc/token or `stepcall widget-token`; default: ?token= on the page)
 *
 * JavaScript API: window.StepcallWidget.mount(element, {server, bot}) returns the widget;
 * window.stepcall is the call object of the last widget mounted (state, transcript, events).
 * The server side is bots/webrtc/routes.py; the data-channel messages are listed in
 * bots/webrtc_transcript.py.
 */
(function () {
  "use strict";

  var HANGUP_MESSAGE = "stepcall-hangup";
  var ICE_GATHER_MAX_MS = 3000;
  var LABELS = {
    idle: "Ready",
    "requesting-mic": "Asking for the microphone…",
    connecting: "Connecting…",
    connected: "Connected",
    ended: "Call ended",
    error: "Error",
  };

  /** One browser call: microphone, peer connection, data channel, transcript. */
  function StepcallCall(options) {
    this.server = (options.server || "").replace(/\/+$/, "");
    this.bot = options.bot || "";
    this.token = options.token || "";
    this.state = "idle";
    this.speaking = "none"; // "none" | "user" | "bot"
    this.muted = false;
    this.error = null;
    this.callId = null;
    this.pcId = null;
    this.transcript = []; // [{role: "bot"|"user", text, final}]
    this.messages = []; // every data-channel message received, in order
    this.pc = null;
    this.channel = null;
    this.micStream = null;
    this.remoteStream = null;
    this._listeners = {};
  }

  StepcallCall.prototype.on = function (name, fn) {
    (this._listeners[name] = this._listeners[name] || []).push(fn);
    return this;
  };

  StepcallCall.prototype._emit = function (name, detail) {
    (this._listeners[name] || []).forEach(function (fn) {
      try { fn(detail); } catch (e) { console.error("stepcall listener", e); }
    });
  };

  StepcallCall.prototype._setState = function (state, error) {
    if (this.state === state && !error) return;
    this.state = state;
    if (error) this.error = String(error && error.message ? error.message : error);
    this._emit("state", { state: state, error: this.error });
  };

  StepcallCall.prototype._setSpeaking = function (who) {
    if (this.speaking === who) return;
    this.speaking = who;
    this._emit("speaking", { speaking: who });
  };

  StepcallCall.prototype._currentBotEntry = function (create) {
    var last = this.transcript[this.transcript.length - 1];
    if (last && last.role === "bot" && !last.final) return last;
    if (!create) return null;
    var entry = { role: "bot", text: "", final: false };
    this.transcript.push(entry);
    return entry;
  };

  StepcallCall.prototype._onMessage = function (raw) {
    var msg;
    try { msg = JSON.parse(raw); } catch (e) { return; }
    this.messages.push(msg);
    if (msg.type === "signalling" && msg.message && msg.message.type === "peerLeft") {
      this._finish("the bot left the call");
      return;
    }
    var data = msg.data || {};
    switch (msg.type) {
      case "bot-ready":
        this.callId = data.call_id || this.callId;
        this._setState("connected");
        break;
      case "bot-llm-started":
        this._currentBotEntry(true);
        break;
      case "bot-tts-text":
        this._currentBotEntry(true).text += data.text || "";
        this._emit("transcript", this.transcript);
        break;
      case "bot-llm-stopped":
      case "bot-interrupted":
        var entry = this._currentBotEntry(false);
        if (entry) { entry.final = true; if (msg.type === "bot-interrupted") entry.interrupted = true; }
        this._emit("transcript", this.transcript);
        break;
      case "user-transcription":
        this.transcript.push({ role: "user", text: data.text || "", final: true });
        this._emit("transcript", this.transcript);
        break;
      case "bot-started-speaking": this._setSpeaking("bot"); break;
      case "bot-stopped-speaking": if (this.speaking === "bot") this._setSpeaking("none"); break;
      case "user-started-speaking": this._setSpeaking("user"); break;
      case "user-stopped-speaking": if (this.speaking === "user") this._setSpeaking("none"); break;
      case "call-ended": this._finish(data.reason || "the bot ended the call"); break;
    }
    this._emit("message", msg);
  };

  function waitForIceGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise(function (resolve) {
      var timer = setTimeout(done, ICE_GATHER_MAX_MS);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
      function check() { if (pc.iceGatheringState === "complete") done(); }
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  /** Place the call: microphone permission, offer, answer. Resolves when the offer is answered. */
  StepcallCall.prototype.start = async function () {
    if (this.state === "requesting-mic" || this.state === "connecting" || this.state === "connected") return;
    var self = this;
    this.transcript = [];
    this.messages = [];
    this.error = null;
    this.muted = false;
    this._setSpeaking("none");
    try {
      this._setState("requesting-mic");
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error("this browser cannot use a microphone here (HTTPS is required)");
      }
      this.micStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
      this._setState("connecting");
      var config = await fetchJson(this.server + "/webrtc/config");
      var pc = new RTCPeerConnection({ iceServers: config.iceServers || [] });
      this.pc = pc;
      // Audio first: the server reads the caller's audio from the first transceiver.
      pc.addTransceiver(this.micStream.getAudioTracks()[0], { direction: "sendrecv", streams: [this.micStream] });
      var channel = pc.createDataChannel("stepcall", { ordered: true });
      this.channel = channel;
      channel.onmessage = function (ev) { self._onMessage(ev.data); };
      pc.ontrack = function (ev) {
        self.remoteStream = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
        self._emit("remote-stream", self.remoteStream);
      };
      pc.onconnectionstatechange = function () {
        var s = pc.connectionState;
        if (s === "connected") self._setState("connected");
        else if (s === "failed") self._finish(null, new Error("the connection failed (firewall? set STEPCALL_ICE_SERVERS)"));
        else if (s === "closed" || s === "disconnected") self._finish("connection " + s);
      };
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      var answer = await fetchJson(this.server + "/webrtc/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          sdp: pc.localDescription.sdp,
          type: pc.localDescription.type,
          request_data: { bot: this.bot || undefined, token: this.token || undefined },
        }),
      });
      this.pcId = answer.pc_id;
      this.callId = answer.call_id || null;
      if (this.pc !== pc) return; // hung up while the offer was in flight
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    } catch (e) {
      this._finish(null, e);
    }
  };

  /** Hang up (tells the bot, then closes the connection). */
  StepcallCall.prototype.hangup = function () {
    if (this.channel && this.channel.readyState === "open") {
      try { this.channel.send(JSON.stringify({ type: HANGUP_MESSAGE })); } catch (e) { /* closing */ }
    }
    this._finish("you hung up");
  };

  StepcallCall.prototype._finish = function (reason, error) {
    if (this.state === "ended" || this.state === "error") return;
    var pc = this.pc;
    this.pc = null;
    this.channel = null;
    if (this.micStream) this.micStream.getTracks().forEach(function (t) { t.stop(); });
    this.micStream = null;
    this._setSpeaking("none");
    this.endReason = reason || null;
    // Let the hang-up message leave before the transport closes.
    if (pc) setTimeout(function () { pc.close(); }, 150);
    this._setState(error ? "error" : "ended", error);
  };

  /** Mute or unmute the microphone (the bot hears silence while muted). */
  StepcallCall.prototype.setMuted = function (muted) {
    this.muted = !!muted;
    if (this.micStream) this.micStream.getAudioTracks().forEach(function (t) { t.enabled = !muted; });
    this._emit("muted", { muted: this.muted });
  };

  /** Received-audio statistics of the call (from RTCPeerConnection.getStats). */
  StepcallCall.prototype.audioStats = async function () {
    var out = { packetsReceived: 0, bytesReceived: 0, totalAudioEnergy: 0, totalSamplesDuration: 0, audioLevel: 0 };
    if (!this.pc) return out;
    var report = await this.pc.getStats();
    report.forEach(function (s) {
      if (s.type === "inbound-rtp" && (s.kind === "audio" || s.mediaType === "audio")) {
        out.packetsReceived += s.packetsReceived || 0;
        out.bytesReceived += s.bytesReceived || 0;
        out.totalAudioEnergy += s.totalAudioEnergy || 0;
        out.totalSamplesDuration += s.totalSamplesDuration || 0;
        out.audioLevel = Math.max(out.audioLevel, s.audioLevel || 0);
      }
    });
    return out;
  };

  async function fetchJson(url, init) {
    var res = await fetch(url, init);
    var body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      throw new Error((body && body.error) || ("the server answered " + res.status));
    }
    return body;
  }

  // ------------------------------------------------------------------------------------------
  // UI
  // ------------------------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function ensureStylesheet(server) {
    var href = server + "/widget/stepcall-widget.css";
    var links = document.querySelectorAll("link[data-stepcall]");
    if (links.length) return;
    var link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = href;
    link.setAttribute("data-stepcall", "");
    document.head.appendChild(link);
  }

  /** Render a widget into ``root`` (or a floating one when ``options.floating``). */
  function mount(root, options) {
    options = options || {};
    var call = new StepcallCall(options);
    ensureStylesheet(call.server);

    var panel = el("div", "stepcall");
    panel.setAttribute("data-state", "idle");
    panel.setAttribute("data-speaking", "none");
    var header = el("div", "stepcall-header");
    var dot = el("span", "stepcall-dot");
    var status = el("span", "stepcall-status", LABELS.idle);
    status.setAttribute("role", "status");
    header.appendChild(dot);
    header.appendChild(status);
    var transcript = el("div", "stepcall-transcript");
    transcript.setAttribute("aria-live", "polite");
    var controls = el("div", "stepcall-controls");
    var callBtn = el("button", "stepcall-call", options.label || "Call");
    var muteBtn = el("button", "stepcall-mute", "Mute");
    var hangBtn = el("button", "stepcall-hangup", "Hang up");
    [callBtn, muteBtn, hangBtn].forEach(function (b) { b.type = "button"; controls.appendChild(b); });
    var audio = el("audio", "stepcall-audio");
    audio.autoplay = true;
    panel.appendChild(header);
    panel.appendChild(transcript);
    panel.appendChild(controls);
    panel.appendChild(audio);

    function render() {
      var live = call.state === "requesting-mic" || call.state === "connecting" || call.state === "connected";
      panel.setAttribute("data-state", call.state);
      panel.setAttribute("data-speaking", call.speaking);
      var label = LABELS[call.state] || call.state;
      if (call.state === "connected" && call.speaking === "bot") label = "Bot is speaking";
      else if (call.state === "connected" && call.speaking === "user") label = "Listening…";
      if (call.state === "error" && call.error) label = "Error: " + call.error;
      status.textContent = label;
      callBtn.disabled = live;
      muteBtn.disabled = call.state !== "connected";
      hangBtn.disabled = !live;
      muteBtn.textContent = call.muted ? "Unmute" : "Mute";
      muteBtn.setAttribute("aria-pressed", call.muted ? "true" : "false");
    }

    function renderTranscript() {
      transcript.textContent = "";
      call.transcript.forEach(function (entry) {
        var line = el("p", "stepcall-line stepcall-" + entry.role);
        line.appendChild(el("b", null, entry.role === "bot" ? "Bot: " : "You: "));
        line.appendChild(document.createTextNode(entry.text + (entry.interrupted ? " …" : "")));
        transcript.appendChild(line);
      });
      transcript.scrollTop = transcript.scrollHeight;
    }

    call.on("state", render);
    call.on("speaking", render);
    call.on("muted", render);
    call.on("transcript", renderTranscript);
    call.on("remote-stream", function (stream) {
      audio.srcObject = stream;
      var played = audio.play();
      if (played && played.catch) played.catch(function () { /* autoplay blocked until a click */ });
    });
    callBtn.addEventListener("click", function () { renderTranscript(); call.start(); });
    muteBtn.addEventListener("click", function () { call.setMuted(!call.muted); });
    hangBtn.addEventListener("click", function () { call.hangup(); });
    window.addEventListener("pagehide", function () {
      if (call.state === "connected" || call.state === "connecting") call.hangup();
    });

    if (options.floating) {
      var wrap = el("div", "stepcall-floating");
      var toggle = el("button", "stepcall-toggle", options.label || "Call");
      toggle.type = "button";
      toggle.setAttribute("aria-expanded", "false");
      panel.hidden = true;
      toggle.addEventListener("click", function () {
        panel.hidden = !panel.hidden;
        toggle.setAttribute("aria-expanded", panel.hidden ? "false" : "true");
      });
      wrap.appendChild(panel);
      wrap.appendChild(toggle);
      document.body.appendChild(wrap);
    } else {
      root.appendChild(panel);
    }
    render();
    window.stepcall = call;
    return { call: call, element: panel, audio: audio };
  }

  window.StepcallWidget = { mount: mount, Call: StepcallCall };

  // Auto-mount from the <script> tag's data-* attributes.
  var script = document.currentScript;
  if (!script) return;
  var server = script.getAttribute("data-server") || new URL(script.src, location.href).origin;
  var bot = script.getAttribute("data-bot") || new URLSearchParams(location.search).get("bot") || "";
  var label = script.getAttribute("data-label") || undefined;
  var token = script.getAttribute("data-token") || new URLSearchParams(location.search).get("token") || "";
  var selector = script.getAttribute("data-mount");
  function autoMount() {
    if (selector) {
      var target = document.querySelector(selector);
      if (!target) { console.error("stepcall: no element matches data-mount=" + selector); return; }
      mount(target, { server: server, bot: bot, label: label, token: token });
    } else {
      mount(null, { server: server, bot: bot, label: label, token: token, floating: true });
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", autoMount);
  else autoMount();
})();
