// The official ElevenLabs JS client (@elevenlabs/client) holding one conversation in Node.
//
//   node peer.mjs '{"url": "ws://…", "mode": "text", "messages": ["Hi"], "timeout_ms": 20000}'
//
// Prints one JSON object per line (what the client saw); exits 0 when the script ran to
// its end, 1 on a timeout or error. Modes:
//   text:  Conversation.startSession({textOnly: true}); sendContextualUpdate, sendUserActivity,
//          sendUserMessage for each message (waiting for each agent response), sendFeedback.
//   voice: VoiceConversation over a WebSocket with a Node audio platform registered through the
//          client's own extension point (setSetupStrategy, as its web and React Native entry
//          points do): the "microphone" streams a raw S16LE file in real time, the "speaker"
//          counts the agent audio it is given.
// Node has no WebSocket the client accepts: the `ws` package is given as globalThis.WebSocket.
// The packages live where provisioning/dev.sh installed them: $JSCLIENT_DIR (.cache/jsclient).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const installed = createRequire(`${process.env.JSCLIENT_DIR}/package.json`);
const load = async (name) => import(pathToFileURL(installed.resolve(name)).href);
globalThis.WebSocket = (await load("ws")).default;
const { Conversation } = await load("@elevenlabs/client");
const { createConnection, setSetupStrategy } = await load("@elevenlabs/client/internal");

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const timer = setTimeout(() => {
  out({ event: "timeout" });
  process.exit(1);
}, cfg.timeout_ms ?? 20000);

let agentResponses = 0;
const aiTexts = [];
const waiters = [];
// Resolves when the agent has said `text` (any new response when undefined) after this call.
function agentSays(text) {
  const from = aiTexts.length;
  return new Promise((resolve) => waiters.push({ from, text, resolve }));
}
function notify() {
  for (let i = waiters.length - 1; i >= 0; i--) {
    const w = waiters[i];
    if (aiTexts.slice(w.from).some((t) => w.text === undefined || t === w.text)) {
      w.resolve();
      waiters.splice(i, 1);
    }
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const disconnected = new Promise((resolve) => {
  cfg.onDisconnectResolve = resolve;
});
let audioBytes = 0;
const clientTools = {};
for (const [name, result] of Object.entries(cfg.client_tools ?? {})) {
  clientTools[name] = async (parameters) => {
    out({ event: "tool", name, parameters });
    return result;
  };
}
const callbacks = {
  signedUrl: cfg.url,
  clientTools,
  onConnect: ({ conversationId }) => out({ event: "connect", conversation_id: conversationId }),
  onMessage: (m) => {
    out({ event: "message", source: m.source, role: m.role, message: m.message, event_id: m.event_id });
    if (m.source === "ai") {
      agentResponses += 1;
      aiTexts.push(m.message);
      notify();
    }
  },
  onPing: (p) => out({ event: "ping", event_id: p.event_id, ping_ms: p.ping_ms ?? null }),
  onAudio: (b64) => {
    audioBytes += Buffer.from(b64, "base64").length;
  },
  onInterruption: (e) => out({ event: "interruption", event_id: e.event_id }),
  onCanSendFeedbackChange: (e) => out({ event: "can_send_feedback", value: e.canSendFeedback }),
  onError: (message, context) => out({ event: "error", message: String(message), context: String(context ?? "") }),
  onDisconnect: (d) => {
    out({ event: "disconnect", reason: d.reason, close_code: d.closeCode ?? null, close_reason: d.closeReason ?? null });
    cfg.onDisconnectResolve();
  },
};

// -- a Node audio platform for VoiceConversation ---------------------------------------------------
class FileMicrophone {
  // Streams S16LE PCM (then silence) at real time in 100 ms chunks, as a browser microphone would.
  constructor(connection, pcm, rateHz) {
    this.connection = connection;
    this.pcm = pcm;
    this.pos = 0;
    this.muted = false;
    this.chunk = Math.round(rateHz / 10) * 2;
    this.sent = 0;
    this.interval = setInterval(() => this.tick(), 100);
  }
  tick() {
    let data = this.pcm.subarray(this.pos, this.pos + this.chunk);
    this.pos += this.chunk;
    if (data.length < this.chunk || this.muted) data = Buffer.alloc(this.chunk);
    this.connection.sendMessage({ user_audio_chunk: Buffer.from(data).toString("base64") });
    this.sent += data.length;
  }
  async close() {
    clearInterval(this.interval);
  }
  async setDevice() {}
  async setMuted(m) {
    this.muted = m;
  }
  isMuted() {
    return this.muted;
  }
  getAnalyser() {
    return undefined;
  }
  getVolume() {
    return 0;
  }
  getByteFrequencyData() {}
}

class CountingSpeaker {
  constructor() {
    this.bytes = 0;
    this.interrupts = 0;
  }
  async close() {}
  async setDevice() {}
  setVolume() {}
  interrupt() {
    this.interrupts += 1;
  }
  getAnalyser() {
    return undefined;
  }
  getVolume() {
    return 0;
  }
  getByteFrequencyData() {}
}

let microphone = null;
let speaker = null;
setSetupStrategy(async (options) => {
  const connection = await createConnection({ ...options, connectionType: "websocket" });
  const pcm = readFileSync(cfg.pcm_path);
  microphone = new FileMicrophone(connection, pcm, connection.inputFormat.sampleRate);
  speaker = new CountingSpeaker();
  const listener = (event) => {
    speaker.bytes += Buffer.from(event.audio_base_64, "base64").length;
  };
  connection.addListener(listener);
  return {
    connection,
    input: microphone,
    output: speaker,
    playbackEventTarget: null,
    detach: async () => connection.removeListener(listener),
  };
});

// -- the conversation ----------------------------------------------------------------------------
try {
  if (cfg.mode === "text") {
    const first = agentSays();
    const conversation = await Conversation.startSession({ ...callbacks, textOnly: true });
    out({ event: "started", id: conversation.getId() });
    // The client can lose a message that arrives with the metadata (see the test): wait, bounded.
    await Promise.race([first, sleep(cfg.first_wait_ms ?? 3000)]);
    conversation.sendContextualUpdate("The visitor is at the entrance.");
    conversation.sendUserActivity();
    for (const [i, text] of (cfg.messages ?? []).entries()) {
      const reply = agentSays((cfg.replies ?? [])[i]);
      conversation.sendUserMessage(text);
      await reply;
    }
    if (conversation.canSendFeedback) conversation.sendFeedback(true);
    await sleep(cfg.linger_ms ?? 0); // pings keep coming meanwhile
    await conversation.endSession();
  } else {
    const reply = agentSays(cfg.until_reply);
    const conversation = await Conversation.startSession({ ...callbacks, connectionType: "websocket" });
    out({ event: "started", id: conversation.getId() });
    await reply;
    await sleep(cfg.linger_ms ?? 0);
    await conversation.endSession();
  }
  await disconnected;
  out({
    event: "done",
    agent_responses: agentResponses,
    audio_bytes: audioBytes,
    speaker_bytes: speaker ? speaker.bytes : 0,
    mic_bytes: microphone ? microphone.sent : 0,
  });
  clearTimeout(timer);
  process.exit(0);
} catch (e) {
  out({ event: "exception", message: String(e && e.message ? e.message : e) });
  process.exit(1);
}
