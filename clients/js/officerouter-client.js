// officerouter-client.js: the browser (and Node 22+) client of officerouter.
//
// One ES module, no dependencies, no build step. It implements the reconnect
// contract of docs/operations.md so that applications do not have to:
// backoff with full jitter, `?since=` recovery with seq dedupe, the close codes
// that mean "stop", token refresh before `exp`, a presence map kept across
// reconnects (from presence events or, opted in, presence diffs), and position
// updates coalesced under the server's rate limit.
// docs/client.md documents the API and every choice made here.

/** Close codes after which the client never reconnects by itself. */
export const STOP_CODES = new Set([
  1000, // a deliberate close by the server (a plug-in effect): it wants us gone
  1002, // protocol error: the same frame would close the next connection too
  1003, // we sent a binary frame: a client bug
  1007, // we sent invalid UTF-8: a client bug
  1008, // policy: we kept flooding past the rate limit
  1009, // we sent a message too big: a client bug
  1010, // extension negotiation failed: retrying will not help
  4003, // banned
]);

/** The close code of an expired token: reconnect at once with a fresh one. */
export const CLOSE_TOKEN_EXPIRED = 4001;
/** The close code of a server going away (stop, restart): reconnect soon, with jitter. */
export const CLOSE_GOING_AWAY = 1001;

/** Defaults of every tunable option (milliseconds unless named otherwise). */
export const DEFAULTS = Object.freeze({
  positions: "plain",
  presence: "events", // "diff": ?presence=diff, presence_state then presence_diff frames (big orgs)
  positionRate: 10, // position_update frames per second; the server allows 20 (--rate)
  backoffBase: 1000, // the first backoff window: a random wait in [0, 1 s)
  backoffMax: 30000, // the largest backoff window
  goingAwayJitter: 1000, // after 1001: a random wait in [0, 1 s), whatever the attempt
  stableAfter: 30000, // a connection open this long resets the backoff
  refreshAt: 0.8, // refresh the token when this fraction of its lifetime has passed
  refreshRetry: 5000, // after a failed getToken() during a refresh, try again this much later
  resendPosition: true, // send our last position again on every new connection
  presenceGrace: 5000, // a user missing from a reconnect's snapshot stays this long (the server's --presence-grace)
});

/**
 * What to do after a close: "stop", "token" (fresh token, at once),
 * "soon" (jittered, regardless of the attempt) or "backoff".
 *
 * @param {number} code the close code the client saw (1006 for a lost connection
 *   or a refused handshake).
 * @returns {"stop" | "token" | "soon" | "backoff"}
 */
export function closeAction(code) {
  if (STOP_CODES.has(code)) return "stop";
  if (code === CLOSE_TOKEN_EXPIRED) return "token";
  if (code === CLOSE_GOING_AWAY) return "soon";
  // Application codes we do not know: the server meant something we cannot
  // handle, and hammering it would not help.
  if (code >= 4000 && code <= 4999) return "stop";
  // 1005, 1006, 1011, 1012, 1013, 1014, 1015 and anything else: retry with backoff.
  return "backoff";
}

/**
 * The backoff window before reconnect attempt `attempt` (0, 1, 2, ...):
 * min(max, base * 2^attempt). The wait itself is a random time in [0, window)
 * ("full jitter").
 */
export function backoffWindow(attempt, base = DEFAULTS.backoffBase, max = DEFAULTS.backoffMax) {
  return Math.min(max, base * 2 ** Math.min(attempt, 30));
}

/**
 * The claims of a JWT, read without verifying it (the server verifies it; the
 * client only needs `exp` and `iat` to know when to refresh).
 * Returns null when the token cannot be read.
 */
export function readClaims(token) {
  try {
    const part = token.split(".")[1];
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** The real clock and randomness; tests pass their own. */
const REAL_CLOCK = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle),
  random: () => Math.random(),
};

// Frames the client handles itself; everything else is an application message.
const PRESENCE_FRAMES = new Set([
  "presence",
  "user_joined",
  "user_left",
  "user_role_changed",
  "presence_state",
  "presence_diff",
]);

export class OfficeClient {
  /**
   * @param {object} options see docs/client.md, "Options".
   */
  constructor(options = {}) {
    if (typeof options.getToken !== "function") {
      throw new TypeError("OfficeClient: getToken must be a function returning a token");
    }
    if (options.url === undefined || (Array.isArray(options.url) && options.url.length === 0)) {
      throw new TypeError("OfficeClient: url must be a URL, a non-empty array of URLs, or a function");
    }
    this._options = { ...DEFAULTS, ...options };
    if (!["plain", "batched"].includes(this._options.positions)) {
      throw new TypeError('OfficeClient: positions must be "plain" or "batched"');
    }
    if (!["events", "diff"].includes(this._options.presence)) {
      throw new TypeError('OfficeClient: presence must be "events" or "diff"');
    }
    if (!(this._options.positionRate > 0 && Number.isFinite(this._options.positionRate))) {
      throw new TypeError("OfficeClient: positionRate must be a positive number of frames a second");
    }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("OfficeClient: no global WebSocket here; pass the WebSocket option");
    }
    this._clock = { ...REAL_CLOCK, ...options.clock };
    this._window = "window" in options ? options.window : globalThis.window;
    this._document = "document" in options ? options.document : globalThis.document;
    this._navigator = "navigator" in options ? options.navigator : globalThis.navigator;

    this._listeners = new Map(); // event name -> Set of {listener}
    this._listening = false; // to online/offline and visibilitychange
    this._state = "idle";
    this._ws = null; // the one socket we own; never two at once
    this._generation = 0; // bumped by each attempt and by a stop: a stale attempt gives up
    this._timer = null; // the pending reconnect
    this._attempt = 0; // reconnects since the last stable connection
    this._urlIndex = 0;
    this._openedAt = null; // when the current connection got `connected`
    this._lastClose = null; // {code, reason} of the last close
    this._waitingForNetwork = false;
    this._connectionInfo = null; // the payload of the current `connected`

    // Recovery: the stream we follow and the last numbered frame emitted.
    this._epoch = null;
    this._seq = null;

    // Token bookkeeping.
    this._token = null;
    this._tokenReceivedAt = 0;
    this._pendingToken = null; // sent in refresh_token, not yet confirmed
    this._refreshTimer = null;
    this._refreshDueAt = null;

    // Presence: userId -> frozen entry; kept across reconnects.
    this._presence = new Map();
    // Users missing from a reconnect's snapshot, on probation: userId -> timer.
    this._departing = new Map();
    this._presenceEmitted = false;
    // With presence "diff": positions of users not in the map (yet), until the
    // next presence_state or presence_diff says whether they joined.
    this._strayPositions = new Map();

    // Positions: the latest one not yet sent, the last one sent, and when.
    this._pendingPosition = null;
    this._lastPosition = null;
    this._lastPositionSentAt = -Infinity;
    this._positionTimer = null;

    this._onOnline = () => this._networkOnline();
    this._onOffline = () => this._networkOffline();
    this._onVisibility = () => this._visibilityChanged();

    if (this._options.autoConnect !== false) {
      // On a microtask, so that listeners added right after `new` see "connecting".
      queueMicrotask(() => {
        if (this._state === "idle") this.connect();
      });
    }
  }

  // ---------------------------------------------------------------- public API

  /** The current state: "idle", "connecting", "open", "reconnecting" or "closed". */
  get state() {
    return this._state;
  }

  /** Who is online (everyone but this user): a copy of the presence map. */
  get presence() {
    return new Map(this._presence);
  }

  /** The payload of the current connection's `connected` frame, or null. */
  get connection() {
    return this._connectionInfo;
  }

  /** `<epoch>.<seq>` of the last numbered frame emitted, or null before the first connection. */
  get since() {
    return this._epoch === null ? null : `${this._epoch}.${this._seq}`;
  }

  /**
   * Listen to an event; returns a function that removes the listener.
   * Events: state, message, presence, join, leave, position, resync, error,
   * token, frame (docs/client.md, "Events").
   */
  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("OfficeClient.on: listener must be a function");
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    // Wrapped, so that the same function added twice is two listeners.
    const entry = { listener };
    set.add(entry);
    return () => set.delete(entry);
  }

  /**
   * Start connecting (the constructor does it unless `autoConnect: false`), or
   * start again after `closed`. Does nothing while connecting or open.
   */
  connect() {
    if (this._state !== "idle" && this._state !== "closed") return;
    this._listenToEnvironment(true);
    this._attempt = 0;
    this._lastClose = null;
    this._setState("connecting", { attempt: 0 });
    this._open();
  }

  /**
   * Close for good (code 1000): no reconnect until `connect()` is called again.
   * The position not yet sent is dropped; recovery state is kept, so a later
   * `connect()` recovers what was missed in between.
   */
  close() {
    if (this._state === "closed" || this._state === "idle") return;
    this._stop(1000, "closed by the client", true);
  }

  /**
   * Send our position; coalesced: at most `positionRate` frames a second, and
   * always the latest position. Returns nothing: sending happens as soon as the
   * rate and the connection allow.
   *
   * @param {{x: number, y: number, roomId?: string}} position
   */
  sendPosition(position) {
    const { x, y, roomId } = position ?? {};
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      throw new TypeError("OfficeClient.sendPosition: x and y must be finite numbers");
    }
    if (roomId !== undefined && (typeof roomId !== "string" || roomId.trim() === "")) {
      throw new TypeError("OfficeClient.sendPosition: roomId must be a non-blank string when given");
    }
    this._pendingPosition = roomId === undefined ? { x, y } : { x, y, roomId };
    this._flushPosition();
  }

  /**
   * Send another client frame as it is (a type a plug-in allows clients to send).
   * It counts against the server's rate limit like positions do. Returns false
   * when there is no open connection (nothing is queued).
   */
  send(type, payload) {
    return this._sendFrame({ type, payload });
  }

  // ------------------------------------------------------------------- events

  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const { listener } of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        // A throwing listener must not break the client, nor hide the others.
        if (event !== "error") this._emit("error", { code: "listener_failed", message: String(error), error });
      }
    }
  }

  _setState(state, info = {}) {
    this._state = state;
    this._emit("state", state, info);
  }

  _report(code, message, extra = {}) {
    this._emit("error", { code, message, ...extra });
  }

  // ------------------------------------------------------------- connections

  /** Where the next attempt goes: the URL (rotating through a list) with its query. */
  async _nextUrl() {
    const { url } = this._options;
    let base;
    if (typeof url === "function") {
      base = await url({ attempt: this._attempt });
    } else if (Array.isArray(url)) {
      base = url[this._urlIndex % url.length];
    } else {
      base = url;
    }
    const location = globalThis.location?.href;
    const target = location ? new URL(base, location) : new URL(base);
    if (target.protocol === "http:") target.protocol = "ws:";
    if (target.protocol === "https:") target.protocol = "wss:";
    if (this._epoch !== null) target.searchParams.set("since", this.since);
    if (this._options.positions === "batched") target.searchParams.set("positions", "batched");
    if (this._options.presence === "diff") target.searchParams.set("presence", "diff");
    return target.toString();
  }

  /** One connection attempt: a fresh token, then the socket. */
  async _open() {
    const generation = ++this._generation;
    const stale = () => generation !== this._generation || this._state === "closed";
    let token;
    try {
      token = await this._options.getToken({ reason: "connect" });
      if (typeof token !== "string" || token === "") throw new TypeError("getToken returned no token");
    } catch (error) {
      if (stale()) return;
      this._report("token_unavailable", `could not get a token: ${error?.message ?? error}`, { error });
      this._scheduleReconnect({ code: 1006, reason: "no token" });
      return;
    }
    let url;
    try {
      url = await this._nextUrl();
    } catch (error) {
      if (stale()) return;
      this._report("connect_failed", `no URL to connect to: ${error?.message ?? error}`, { error });
      this._scheduleReconnect({ code: 1006, reason: "no URL" });
      return;
    }
    // close() or another attempt may have happened while getToken ran.
    if (stale()) return;
    this._useToken(token);
    let ws;
    try {
      ws = new this._WebSocket(url, ["bearer", token]);
    } catch (error) {
      this._report("connect_failed", String(error?.message ?? error), { error });
      this._scheduleReconnect({ code: 1006, reason: "could not open" });
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => {
      if (this._ws === ws) this._received(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._closed(event.code ?? 1006, event.reason ?? "");
    };
    // Every failure is followed by a close event; nothing to do on error itself.
    ws.onerror = () => {};
  }

  /** Drop the current socket (without reacting to its close event). */
  _detach(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._openedAt = null;
    this._connectionInfo = null;
    this._cancelRefresh();
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing or closed
    }
  }

  _closed(code, reason) {
    const wasOpen = this._openedAt !== null;
    const stable = wasOpen && this._clock.now() - this._openedAt >= this._options.stableAfter;
    this._ws = null;
    this._openedAt = null;
    this._connectionInfo = null;
    this._cancelRefresh();
    if (stable) {
      this._attempt = 0;
      this._lastClose = null;
    }
    const action = closeAction(code);
    if (action === "stop") {
      this._stop(code, reason, false);
      return;
    }
    this._scheduleReconnect({ code, reason, action, wasOpen });
  }

  _scheduleReconnect({ code, reason, action = "backoff", wasOpen = false }) {
    const { backoffBase, backoffMax, goingAwayJitter } = this._options;
    const previous = this._lastClose;
    this._lastClose = { code, reason };
    let delay;
    if (action === "token" && previous?.code !== CLOSE_TOKEN_EXPIRED) {
      delay = 0; // a fresh token at once; twice in a row means backoff
    } else if (action === "soon" && wasOpen) {
      delay = this._clock.random() * goingAwayJitter;
    } else {
      delay = this._clock.random() * backoffWindow(this._attempt, backoffBase, backoffMax);
    }
    const attempt = this._attempt++;
    this._urlIndex++;
    this._setState("reconnecting", { code, reason, attempt, delay });
    if (this._navigator?.onLine === false) {
      // No network: waiting for `online` is better than spending attempts.
      this._waitingForNetwork = true;
      return;
    }
    this._timer = this._clock.setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
  }

  /** Reconnect now instead of waiting (the network came back, the page is visible). */
  _reconnectNow(jitter) {
    if (this._state !== "reconnecting" || this._ws !== null) return;
    if (this._timer === null && !this._waitingForNetwork) return; // an attempt is under way
    this._waitingForNetwork = false;
    if (this._timer !== null) this._clock.clearTimeout(this._timer);
    this._timer = this._clock.setTimeout(() => {
      this._timer = null;
      this._open();
    }, this._clock.random() * jitter);
  }

  _stop(code, reason, byClient) {
    this._generation++; // forget an attempt in flight
    if (this._timer !== null) this._clock.clearTimeout(this._timer);
    this._timer = null;
    this._waitingForNetwork = false;
    this._detach(1000, "closed by the client");
    this._clearPositionTimer();
    this._pendingPosition = null;
    this._listenToEnvironment(false);
    this._token = null;
    for (const timer of this._departing.values()) this._clock.clearTimeout(timer);
    this._departing.clear();
    this._strayPositions.clear();
    if (this._presence.size > 0) {
      // Nobody can say who is online any more.
      this._presence = new Map();
      this._emit("presence", this.presence);
    }
    this._setState("closed", { code, reason, byClient });
  }

  // ---------------------------------------------------------------- receiving

  _received(data) {
    if (typeof data !== "string") return; // the protocol has no binary frames
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._report("bad_frame", "the server sent a frame that is not JSON");
      return;
    }
    if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") return;
    this._emit("frame", frame);
    const payload = frame.payload ?? {};
    switch (frame.type) {
      case "connected":
        this._connected(payload);
        return;
      case "position_update":
        this._position(frame.from, payload);
        return;
      case "positions":
        for (const { userId, ...position } of payload.positions ?? []) this._position(userId, position);
        return;
      case "token_refreshed":
        this._refreshed(payload);
        return;
      case "error":
        this._serverError(payload);
        return;
      default:
        if (PRESENCE_FRAMES.has(frame.type)) {
          this._presenceFrame(frame.type, payload);
          return;
        }
    }
    if (typeof frame.seq === "number") {
      // Numbered: emitted once, in order. A replay may repeat what we saw.
      if (this._seq !== null && frame.seq <= this._seq) return;
      this._seq = frame.seq;
    }
    this._emit("message", frame);
  }

  _connected(payload) {
    const recovered = payload.recovered === true;
    const asked = this._epoch !== null;
    if (!recovered) {
      // A new stream, or a gap that cannot be filled: continue from here.
      this._epoch = payload.epoch;
      this._seq = payload.seq;
    }
    // On `recovered: true` the old seq stays until the replay arrives: moving
    // it to this frame's seq now would lose the replay if we dropped meanwhile.
    this._openedAt = this._clock.now();
    this._connectionInfo = payload;
    this._setState("open", { ...payload, attempt: this._attempt });
    if (asked && !recovered) this._emit("resync", payload);
    this._scheduleRefresh();
    // The server may have forgotten our position (a restart): tell it again.
    if (this._pendingPosition === null && this._lastPosition !== null && this._options.resendPosition) {
      this._pendingPosition = this._lastPosition;
    }
    this._lastPositionSentAt = -Infinity; // a new connection has a full rate bucket
    this._flushPosition();
  }

  _serverError(payload) {
    const { code, message } = payload;
    if (code === "refresh_refused") {
      // The connection keeps its old expiry; when it closes with 4001 we come
      // back at once with a fresh token.
      this._pendingToken = null;
      this._report(code, message);
      return;
    }
    if (code === "rate_limited" && this._pendingToken) {
      // Our refresh was dropped with the burst: send it again shortly.
      this._pendingToken = null;
      this._refreshAfter(1000);
    }
    this._report(code, message);
  }

  // ----------------------------------------------------------------- presence

  _presenceFrame(type, payload) {
    if (type === "presence") {
      this._applySnapshot(payload.users ?? []);
      return;
    }
    if (type === "presence_state") {
      this._applyState(payload);
      return;
    }
    if (type === "presence_diff") {
      this._applyDiff(payload);
      return;
    }
    const before = this._presence.get(payload.userId);
    if (type === "user_joined") {
      this._keep(payload.userId);
      this._presence.set(payload.userId, Object.freeze({ ...payload }));
      if (!before) this._emit("join", this._presence.get(payload.userId));
    } else if (type === "user_left") {
      if (!before) return;
      this._keep(payload.userId);
      this._presence.delete(payload.userId);
      this._emit("leave", payload.userId);
    } else if (type === "user_role_changed") {
      if (!before) return;
      this._presence.set(payload.userId, Object.freeze({ ...before, role: payload.role }));
    }
    this._emit("presence", this.presence);
  }

  /**
   * Replace the map by a snapshot, in one step: users who stayed are never
   * removed and added again, so a reconnect causes no leave/join flicker.
   *
   * A user the snapshot lacks while we had them is not dropped at once: after a
   * server restart everyone reconnects in some order, and the first back would
   * see the others leave and join again. Like the server's own grace period,
   * they stay (with `connections: 0`) for `presenceGrace`, and leave only if no
   * `user_joined` brought them back by then.
   */
  _applySnapshot(users) {
    const next = new Map(users.map((user) => [user.userId, Object.freeze({ ...user })]));
    const joined = [...next.keys()].filter((id) => !this._presence.has(id));
    for (const id of next.keys()) this._keep(id);
    for (const [id, entry] of this._presence) {
      if (next.has(id)) continue;
      next.set(id, entry.connections === 0 ? entry : Object.freeze({ ...entry, connections: 0 }));
      if (!this._departing.has(id)) {
        const timer = this._clock.setTimeout(() => this._depart(id), this._options.presenceGrace);
        this._departing.set(id, timer);
      }
    }
    const changed =
      joined.length > 0 || [...next].some(([id, user]) => !sameEntry(user, this._presence.get(id)));
    this._presence = next;
    for (const id of joined) this._emit("join", next.get(id));
    if (changed || !this._presenceEmitted) this._emit("presence", this.presence);
    this._presenceEmitted = true;
  }

  /**
   * `presence_state` (presence "diff"): everyone online, by role, and the
   * positions known. Applied as a snapshot, with the same grace for users it
   * lacks. It lists this user too, whom the map leaves out; it carries no
   * connection counts (`connections: null`).
   */
  _applyState({ users = {}, positions = {} }) {
    const self = this._connectionInfo?.userId;
    const entries = [];
    for (const [role, ids] of Object.entries(users)) {
      for (const userId of ids) {
        if (userId === self) continue;
        const known = Object.hasOwn(positions, userId) ? positions[userId] : this._strayPositions.get(userId);
        const position = known ?? null;
        entries.push({ userId, role, connections: null, position });
      }
    }
    this._strayPositions.clear();
    this._applySnapshot(entries);
  }

  /**
   * `presence_diff` (presence "diff"): one tick's net change. Leaves first,
   * then joins, as the protocol says: a user in both left and came back within
   * the tick (`leave`, then `join`, their position forgotten); a join of a user
   * in the map is a role change (or the end of a probation). One `presence`
   * event for the whole diff.
   */
  _applyDiff({ joins = {}, leaves = [] }) {
    const self = this._connectionInfo?.userId;
    let changed = false;
    for (const userId of leaves) {
      this._keep(userId);
      if (userId === self || !this._presence.delete(userId)) continue;
      changed = true;
      this._emit("leave", userId);
    }
    for (const [role, ids] of Object.entries(joins)) {
      for (const userId of ids) {
        if (userId === self) continue;
        this._keep(userId);
        const before = this._presence.get(userId);
        const position = before ? before.position : (this._strayPositions.get(userId) ?? null);
        const entry = Object.freeze({ userId, role, connections: null, position });
        if (before && sameEntry(entry, before)) continue;
        this._presence.set(userId, entry);
        changed = true;
        if (!before) this._emit("join", entry);
      }
    }
    this._strayPositions.clear();
    if (changed) this._emit("presence", this.presence);
  }

  /** A user on probation is back (or gone for sure): stop the probation. */
  _keep(userId) {
    const timer = this._departing.get(userId);
    if (timer === undefined) return;
    this._clock.clearTimeout(timer);
    this._departing.delete(userId);
  }

  /** The probation of a user missing from a snapshot ran out: they left. */
  _depart(userId) {
    this._departing.delete(userId);
    if (!this._presence.delete(userId)) return;
    this._emit("leave", userId);
    this._emit("presence", this.presence);
  }

  _position(userId, position) {
    if (typeof userId !== "string") return;
    const entry = this._presence.get(userId);
    if (entry) {
      this._presence.set(userId, Object.freeze({ ...entry, position }));
    } else if (this._options.presence === "diff" && userId !== this._connectionInfo?.userId) {
      // Presence and positions ticks are not ordered: a newcomer's position
      // may come before the diff that lists them.
      this._strayPositions.set(userId, position);
    }
    this._emit("position", userId, position);
  }

  // ---------------------------------------------------------------- positions

  _flushPosition() {
    if (this._pendingPosition === null || this._positionTimer !== null) return;
    if (this._connectionInfo === null) return; // sent once `connected` arrives
    const interval = 1000 / this._options.positionRate;
    const wait = this._lastPositionSentAt + interval - this._clock.now();
    if (wait > 0) {
      // Latest wins: later calls replace the pending position until then.
      this._positionTimer = this._clock.setTimeout(() => {
        this._positionTimer = null;
        this._flushPosition();
      }, wait);
      return;
    }
    const position = this._pendingPosition;
    if (this._sendFrame({ type: "position_update", payload: position })) {
      this._pendingPosition = null;
      this._lastPosition = position;
      this._lastPositionSentAt = this._clock.now();
    }
  }

  _clearPositionTimer() {
    if (this._positionTimer !== null) this._clock.clearTimeout(this._positionTimer);
    this._positionTimer = null;
  }

  _sendFrame(frame) {
    const ws = this._ws;
    if (ws === null || this._connectionInfo === null || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // -------------------------------------------------------------------- token

  _useToken(token) {
    this._token = token;
    this._tokenReceivedAt = this._clock.now();
  }

  /** Plan the refresh of the current token at `refreshAt` of its lifetime. */
  _scheduleRefresh() {
    this._cancelRefresh();
    const claims = this._token && readClaims(this._token);
    if (!claims || typeof claims.exp !== "number") return; // nothing to plan with
    // The lifetime from the token itself (exp - iat) does not depend on the
    // browser's clock being right; without iat, fall back on the clock.
    const lifetime =
      typeof claims.iat === "number"
        ? (claims.exp - claims.iat) * 1000
        : claims.exp * 1000 - this._clock.now();
    const due = this._tokenReceivedAt + Math.max(1000, lifetime * this._options.refreshAt);
    this._refreshAfter(Math.max(0, due - this._clock.now()));
  }

  _refreshAfter(delay) {
    this._cancelRefresh();
    this._refreshDueAt = this._clock.now() + delay;
    this._refreshTimer = this._clock.setTimeout(() => {
      this._refreshTimer = null;
      this._refresh();
    }, delay);
  }

  _cancelRefresh() {
    if (this._refreshTimer !== null) this._clock.clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this._refreshDueAt = null;
  }

  async _refresh() {
    const ws = this._ws;
    let token;
    try {
      token = await this._options.getToken({ reason: "refresh" });
      if (typeof token !== "string" || token === "") throw new TypeError("getToken returned no token");
    } catch (error) {
      if (this._ws !== ws || ws === null) return;
      this._report("token_unavailable", `could not get a token: ${error?.message ?? error}`, { error });
      this._refreshAfter(this._options.refreshRetry);
      return;
    }
    if (this._ws !== ws || ws === null) return; // that connection is gone
    this._pendingToken = token;
    this._sendFrame({ type: "refresh_token", payload: { token } });
  }

  _refreshed(payload) {
    if (this._pendingToken) this._useToken(this._pendingToken);
    this._pendingToken = null;
    this._emit("token", payload);
    this._scheduleRefresh();
  }

  // -------------------------------------------------------------- environment

  _listenToEnvironment(on) {
    const method = on ? "addEventListener" : "removeEventListener";
    if (on === this._listening) return;
    this._listening = on;
    this._window?.[method]?.("online", this._onOnline);
    this._window?.[method]?.("offline", this._onOffline);
    this._document?.[method]?.("visibilitychange", this._onVisibility);
  }

  _networkOnline() {
    // The network is back: do not wait for the rest of a long backoff, but
    // spread the reconnects of a whole office over a second.
    this._reconnectNow(this._options.goingAwayJitter);
  }

  _networkOffline() {
    // Stop spending attempts while there is no network; an open socket is
    // left alone: it may still work (a local server), and if not its close
    // event comes.
    if (this._state === "reconnecting" && this._timer !== null) {
      this._clock.clearTimeout(this._timer);
      this._timer = null;
      this._waitingForNetwork = true;
    }
  }

  _visibilityChanged() {
    if (this._document?.visibilityState !== "visible") return;
    // Timers may have been frozen while the page slept.
    if (this._refreshDueAt !== null && this._clock.now() >= this._refreshDueAt) {
      this._cancelRefresh();
      this._refresh();
    }
    this._reconnectNow(this._options.goingAwayJitter);
  }
}

function sameEntry(a, b) {
  if (!b) return false;
  return (
    a.role === b.role &&
    a.connections === b.connections &&
    JSON.stringify(a.position ?? null) === JSON.stringify(b.position ?? null)
  );
}
