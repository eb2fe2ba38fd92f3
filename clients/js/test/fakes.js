// Test doubles: a WebSocket the test drives by hand, a clock the test moves,
// and browser-like event targets for online/offline and visibilitychange.

/** A fake WebSocket class; every instance is recorded in `FakeWebSocket.all`. */
export class FakeWebSocket {
  static all = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0; // CONNECTING
    this.sent = [];
    this.closedWith = null; // [code, reason] when the client closed it
    FakeWebSocket.all.push(this);
  }

  static reset() {
    FakeWebSocket.all = [];
  }

  static get last() {
    return FakeWebSocket.all.at(-1);
  }

  /** Frames the client sent, parsed. */
  get frames() {
    return this.sent.map((text) => JSON.parse(text));
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(text);
  }

  close(code, reason) {
    this.closedWith = [code, reason];
    this.readyState = 3;
  }

  // What the server does.
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }

  /** Accept and send `connected` (and a presence snapshot when `users` is given). */
  welcome({ epoch = "e1", seq = 0, recovered, users, userId = "me" } = {}) {
    this.accept();
    const payload = { connectionId: "c", userId, orgId: "org", role: "member", epoch, seq };
    if (recovered !== undefined) payload.recovered = recovered;
    this.receive({ type: "connected", payload });
    if (users !== undefined) this.receive({ type: "presence", payload: { users } });
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/** A clock whose time moves only when the test says so. */
export class FakeClock {
  constructor(start = 1_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
    this.randomValue = 0.5;
    this.now = () => this.time;
    this.random = () => this.randomValue;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.time + Math.max(0, ms), fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** The delays of the pending timers, from now. */
  get pending() {
    return [...this.timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }

  /** Move time forward by `ms`, firing due timers in order. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (next === null || t.at < next[1].at)) next = [id, t];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.time = Math.max(this.time, next[1].at);
      next[1].fn();
      await settle();
    }
    this.time = end;
    await settle();
  }
}

/** Let pending promises (getToken, the connect microtask) run. */
export async function settle() {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

/** A minimal EventTarget-like object (window, document). */
export class FakeTarget {
  constructor(props = {}) {
    Object.assign(this, props);
    this.listeners = new Map();
  }

  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
  }

  removeEventListener(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  dispatch(type) {
    for (const fn of this.listeners.get(type) ?? []) fn({ type });
  }

  count(type) {
    return this.listeners.get(type)?.size ?? 0;
  }
}

/** A JWT-shaped token with these claims (unsigned: the client never verifies). */
export function fakeToken(claims) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  return `${part({ alg: "RS256", typ: "JWT" })}.${part(claims)}.c2ln`;
}
