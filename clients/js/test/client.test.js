// Unit tests of officerouter-client.js with node --test: a fake WebSocket and a
// fake clock, no network, no real time.
import assert from "node:assert/strict";
import { beforeEach, describe, test } from "node:test";

import { OfficeClient, backoffWindow, closeAction, readClaims } from "../officerouter-client.js";
import { FakeClock, FakeTarget, FakeWebSocket, fakeToken, settle } from "./fakes.js";

/** A client wired to fakes, with every event it emits recorded in `events`. */
async function setup(options = {}) {
  const clock = new FakeClock();
  const window = new FakeTarget();
  const document = new FakeTarget({ visibilityState: "visible" });
  const navigator = { onLine: true };
  const tokens = [];
  const getToken = async ({ reason }) => {
    const now = Math.floor(clock.time / 1000);
    const token = fakeToken({ sub: "me", iat: now, exp: now + 100, n: tokens.length });
    tokens.push({ reason, token });
    return token;
  };
  const client = new OfficeClient({
    url: "ws://router.test/websocket",
    getToken,
    WebSocket: FakeWebSocket,
    clock,
    window,
    document,
    navigator,
    ...options,
  });
  const events = [];
  for (const name of ["state", "message", "presence", "join", "leave", "position", "resync", "error", "token"]) {
    client.on(name, (...args) => events.push([name, ...args]));
  }
  const of = (name) => events.filter((e) => e[0] === name).map((e) => e.slice(1));
  await settle();
  return { client, clock, window, document, navigator, tokens, events, of };
}

const room = (seq, name = `m${seq}`) => ({ type: "room_updated", seq, payload: { roomId: "r", name } });
const user = (userId, extra = {}) => ({ userId, role: "member", connections: 1, position: null, ...extra });

beforeEach(() => FakeWebSocket.reset());

describe("connecting", () => {
  test("connects on its own with the token in the bearer subprotocol form", async () => {
    const { tokens, of } = await setup();
    assert.equal(FakeWebSocket.all.length, 1);
    assert.deepEqual(FakeWebSocket.last.protocols, ["bearer", tokens[0].token]);
    assert.equal(FakeWebSocket.last.url, "ws://router.test/websocket");
    assert.deepEqual(of("state")[0], ["connecting", { attempt: 0 }]);
    FakeWebSocket.last.welcome();
    assert.equal(of("state").at(-1)[0], "open");
  });

  test("autoConnect false waits for connect(), and connect() twice opens one socket", async () => {
    const { client } = await setup({ autoConnect: false });
    assert.equal(FakeWebSocket.all.length, 0);
    assert.equal(client.state, "idle");
    client.connect();
    client.connect();
    await settle();
    assert.equal(FakeWebSocket.all.length, 1);
  });

  test("batched positions and since go in the query, next to the URL's own", async () => {
    const { clock } = await setup({ url: "wss://h.test/websocket?tenant=x", positions: "batched" });
    assert.equal(FakeWebSocket.last.url, "wss://h.test/websocket?tenant=x&positions=batched");
    FakeWebSocket.last.welcome({ epoch: "abc", seq: 7 });
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(1000);
    assert.equal(FakeWebSocket.last.url, "wss://h.test/websocket?tenant=x&since=abc.7&positions=batched");
  });

  test("several URLs are tried in turn, one more at each reconnect", async () => {
    const { clock } = await setup({ url: ["ws://a.test/websocket", "ws://b.test/websocket"] });
    const hosts = () => FakeWebSocket.all.map((ws) => new URL(ws.url).host);
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(1000);
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(2000);
    assert.deepEqual(hosts(), ["a.test", "b.test", "a.test"]);
  });

  test("a URL function is asked for each attempt", async () => {
    const asked = [];
    const { clock } = await setup({
      url: async ({ attempt }) => {
        asked.push(attempt);
        return `ws://n${attempt}.test/websocket`;
      },
    });
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(1000);
    assert.deepEqual(asked, [0, 1]);
    assert.equal(new URL(FakeWebSocket.last.url).host, "n1.test");
  });

  test("bad options are refused with a clear TypeError", () => {
    const getToken = async () => "t";
    assert.throws(() => new OfficeClient({ url: "ws://x", WebSocket: FakeWebSocket }), /getToken/);
    assert.throws(() => new OfficeClient({ getToken, WebSocket: FakeWebSocket }), /url/);
    assert.throws(() => new OfficeClient({ url: [], getToken, WebSocket: FakeWebSocket }), /url/);
    assert.throws(
      () => new OfficeClient({ url: "ws://x", getToken, WebSocket: FakeWebSocket, positions: "all" }),
      /positions/,
    );
    assert.throws(() => new OfficeClient({ url: "ws://x", getToken, WebSocket: undefined }), /WebSocket/);
  });

  test("on() returns a function that removes the listener", async () => {
    const { client } = await setup();
    const seen = [];
    const off = client.on("message", (f) => seen.push(f.seq));
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.receive(room(1));
    off();
    FakeWebSocket.last.receive(room(2));
    assert.deepEqual(seen, [1]);
  });

  test("a listener that throws is reported and the others still run", async () => {
    const { client, of } = await setup();
    const seen = [];
    client.on("message", () => {
      throw new Error("boom");
    });
    client.on("message", (f) => seen.push(f.seq));
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.receive(room(1));
    assert.deepEqual(seen, [1]);
    assert.equal(of("error")[0][0].code, "listener_failed");
  });
});

describe("backoff and the close-code policy", () => {
  test("windows grow from 1 s, doubling, capped at 30 s", () => {
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 10, 100].map((n) => backoffWindow(n)),
      [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000],
    );
  });

  test("each wait is full jitter: random times the window, never more", async () => {
    const { clock, of } = await setup();
    clock.randomValue = 0.999;
    for (let i = 0; i < 8; i++) {
      FakeWebSocket.last.serverClose(1006);
      const [, info] = of("state").at(-1);
      assert.equal(info.attempt, i);
      assert.ok(info.delay < backoffWindow(i) && info.delay >= 0.99 * backoffWindow(i), `${i}: ${info.delay}`);
      assert.deepEqual(clock.pending, [info.delay]);
      await clock.advance(info.delay);
      assert.equal(FakeWebSocket.all.length, i + 2, "one new socket per attempt");
    }
    clock.randomValue = 0;
    FakeWebSocket.last.serverClose(1006);
    assert.equal(of("state").at(-1)[1].delay, 0, "the window starts at 0");
  });

  test("backoff resets only after a connection stayed open 30 s", async () => {
    const { clock, of } = await setup();
    clock.randomValue = 0.5;
    for (let i = 0; i < 3; i++) {
      FakeWebSocket.last.serverClose(1006);
      await clock.advance(of("state").at(-1)[1].delay);
    }
    // Open, closed right away with 1013: still backing off.
    FakeWebSocket.last.welcome();
    await clock.advance(5000);
    FakeWebSocket.last.serverClose(1013);
    assert.equal(of("state").at(-1)[1].attempt, 3);
    await clock.advance(of("state").at(-1)[1].delay);
    // Open for 30 s: the next drop starts again from the first window.
    FakeWebSocket.last.welcome();
    await clock.advance(30000);
    FakeWebSocket.last.serverClose(1006);
    assert.deepEqual(of("state").at(-1)[1], { code: 1006, reason: "", attempt: 0, delay: 500 });
  });

  test("1001 from an open connection reconnects within a second, whatever the attempt", async () => {
    const { clock, of } = await setup();
    clock.randomValue = 0.99;
    for (let i = 0; i < 5; i++) {
      FakeWebSocket.last.serverClose(1006);
      await clock.advance(of("state").at(-1)[1].delay);
    }
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.serverClose(1001, "server shutting down");
    const [, info] = of("state").at(-1);
    assert.equal(info.code, 1001);
    assert.ok(info.delay < 1000 && info.delay > 900);
    // A restart that is not over yet: the next failure backs off again.
    await clock.advance(info.delay);
    FakeWebSocket.last.serverClose(1006);
    assert.ok(of("state").at(-1)[1].delay > 10000);
  });

  for (const code of [1006, 1011, 1012, 1013, 1005]) {
    test(`${code} reconnects with backoff and since`, async () => {
      const { clock, of } = await setup();
      FakeWebSocket.last.welcome({ epoch: "e", seq: 3 });
      FakeWebSocket.last.serverClose(code);
      assert.equal(of("state").at(-1)[0], "reconnecting");
      await clock.advance(1000);
      assert.equal(FakeWebSocket.all.length, 2);
      assert.match(FakeWebSocket.last.url, /since=e\.3/);
    });
  }

  for (const code of [4003, 1008, 1000, 1002, 1003, 1007, 1009, 4999]) {
    test(`${code} closes for good: no timer, getToken not called again until connect()`, async () => {
      const { client, clock, tokens, of } = await setup();
      FakeWebSocket.last.welcome({ users: [user("bob")] });
      FakeWebSocket.last.serverClose(code, "why");
      assert.deepEqual(of("state").at(-1), ["closed", { code, reason: "why", byClient: false }]);
      assert.deepEqual(clock.pending, []);
      await clock.advance(3_600_000);
      assert.equal(tokens.length, 1);
      assert.equal(FakeWebSocket.all.length, 1);
      assert.equal(client.presence.size, 0, "presence is unknown once closed");
      client.connect();
      await settle();
      assert.equal(tokens.length, 2);
      assert.equal(FakeWebSocket.all.length, 2);
    });
  }

  test("the policy table", () => {
    assert.equal(closeAction(4001), "token");
    assert.equal(closeAction(1001), "soon");
    assert.equal(closeAction(4003), "stop");
    assert.equal(closeAction(1008), "stop");
    assert.equal(closeAction(1006), "backoff");
    assert.equal(closeAction(1012), "backoff");
    assert.equal(closeAction(3000), "backoff");
  });

  test("4001 reconnects at once with a fresh token and since; twice in a row backs off", async () => {
    const { clock, tokens, of } = await setup();
    clock.randomValue = 0.5;
    FakeWebSocket.last.welcome({ epoch: "e", seq: 5 });
    FakeWebSocket.last.serverClose(4001, "token expired; reconnect with a fresh token");
    assert.equal(of("state").at(-1)[1].delay, 0);
    await clock.advance(0);
    assert.equal(FakeWebSocket.all.length, 2);
    assert.equal(tokens.length, 2);
    assert.notEqual(FakeWebSocket.last.protocols[1], FakeWebSocket.all[0].protocols[1]);
    assert.match(FakeWebSocket.last.url, /since=e\.5/);
    FakeWebSocket.last.welcome({ epoch: "e", seq: 5, recovered: true });
    FakeWebSocket.last.serverClose(4001);
    assert.ok(of("state").at(-1)[1].delay > 0, "a token that keeps expiring is not retried in a loop");
  });

  test("a 4001 after a stable connection is fast again, even if the last close was a 4001", async () => {
    const { clock, of } = await setup();
    FakeWebSocket.last.welcome({ epoch: "e", seq: 5 });
    FakeWebSocket.last.serverClose(4001);
    await clock.advance(0);
    FakeWebSocket.last.welcome({ epoch: "e", seq: 5, recovered: true });
    await clock.advance(3_600_000);
    FakeWebSocket.last.serverClose(4001);
    assert.equal(of("state").at(-1)[1].delay, 0);
  });

  test("a URL function that throws is reported and retried with backoff", async () => {
    let calls = 0;
    const { clock, of } = await setup({
      url: () => {
        if (calls++ === 0) throw new Error("discovery down");
        return "ws://later.test/websocket";
      },
    });
    assert.equal(of("error")[0][0].code, "connect_failed");
    assert.equal(FakeWebSocket.all.length, 0);
    await clock.advance(1000);
    assert.equal(new URL(FakeWebSocket.last.url).host, "later.test");
  });

  test("a failing getToken is reported and retried with backoff", async () => {
    let fail = true;
    const clock = new FakeClock();
    const errors = [];
    const client = new OfficeClient({
      url: "ws://x.test/websocket",
      WebSocket: FakeWebSocket,
      clock,
      window: null,
      document: null,
      navigator: null,
      getToken: async () => {
        if (fail) throw new Error("backend down");
        return fakeToken({ exp: 2e9 });
      },
    });
    client.on("error", (e) => errors.push(e.code));
    await settle();
    assert.equal(FakeWebSocket.all.length, 0);
    assert.deepEqual(errors, ["token_unavailable"]);
    assert.equal(client.state, "reconnecting");
    fail = false;
    await clock.advance(1000);
    assert.equal(FakeWebSocket.all.length, 1);
  });

  test("close() closes the socket with 1000, cancels everything and stops listening", async () => {
    const { client, clock, window, document, of } = await setup();
    assert.equal(window.count("online"), 1);
    FakeWebSocket.last.welcome();
    client.sendPosition({ x: 1, y: 1 });
    client.sendPosition({ x: 2, y: 2 });
    client.close();
    assert.deepEqual(FakeWebSocket.last.closedWith, [1000, "closed by the client"]);
    assert.deepEqual(of("state").at(-1), ["closed", { code: 1000, reason: "closed by the client", byClient: true }]);
    assert.deepEqual(clock.pending, []);
    assert.equal(window.count("online") + window.count("offline") + document.count("visibilitychange"), 0);
  });

  test("close() while getToken runs opens no socket", async () => {
    let release;
    const client = new OfficeClient({
      url: "ws://x.test/websocket",
      WebSocket: FakeWebSocket,
      clock: new FakeClock(),
      getToken: () => new Promise((resolve) => (release = resolve)),
    });
    await settle();
    client.close();
    release(fakeToken({ exp: 2e9 }));
    await settle();
    assert.equal(FakeWebSocket.all.length, 0);
  });
});

describe("recovery", () => {
  test("numbered messages are emitted once, in order, across a recovered reconnect", async () => {
    const { clock, of } = await setup();
    FakeWebSocket.last.welcome({ epoch: "e", seq: 0 });
    FakeWebSocket.last.receive(room(1));
    FakeWebSocket.last.receive(room(2));
    FakeWebSocket.last.receive(room(2)); // a duplicate on the wire
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(1000);
    assert.match(FakeWebSocket.last.url, /since=e\.2/);
    FakeWebSocket.last.welcome({ epoch: "e", seq: 4, recovered: true });
    // A replay that overlaps what we saw (as after a reconnect race), then live.
    for (const seq of [2, 3, 4, 5]) FakeWebSocket.last.receive(room(seq));
    assert.deepEqual(
      of("message").map(([f]) => f.seq),
      [1, 2, 3, 4, 5],
    );
    assert.deepEqual(of("resync"), []);
  });

  test("recovered: true keeps the old since until the replay arrives", async () => {
    const { client, clock } = await setup();
    FakeWebSocket.last.welcome({ epoch: "e", seq: 2 });
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(1000);
    FakeWebSocket.last.welcome({ epoch: "e", seq: 9, recovered: true });
    assert.equal(client.since, "e.2");
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(2000);
    assert.match(FakeWebSocket.last.url, /since=e\.2/);
  });

  test("recovered: false emits resync and continues from the connected frame", async () => {
    const { clock, of, client } = await setup();
    FakeWebSocket.last.welcome({ epoch: "old", seq: 40 });
    assert.deepEqual(of("resync"), [], "no resync on the first connection");
    FakeWebSocket.last.receive(room(41));
    FakeWebSocket.last.serverClose(1001);
    await clock.advance(1000);
    FakeWebSocket.last.welcome({ epoch: "new", seq: 3, recovered: false });
    assert.equal(of("resync").length, 1);
    assert.equal(client.since, "new.3");
    FakeWebSocket.last.receive(room(3)); // not after the stream head: dropped
    FakeWebSocket.last.receive(room(4));
    assert.deepEqual(
      of("message").map(([f]) => f.seq),
      [41, 4],
    );
    const states = of("state").map(([s]) => s);
    assert.deepEqual(states, ["connecting", "open", "reconnecting", "open"]);
  });

  test("unnumbered application frames are messages too; router frames are not", async () => {
    const { of } = await setup();
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.receive({ type: "desk_ping", payload: {} });
    FakeWebSocket.last.receive({ type: "token_refreshed", payload: { expiresAt: 1 } });
    FakeWebSocket.last.receive("not json");
    assert.deepEqual(
      of("message").map(([f]) => f.type),
      ["desk_ping"],
    );
    assert.equal(of("error")[0][0].code, "bad_frame");
  });
});

describe("presence", () => {
  test("the map follows the snapshot and the events", async () => {
    const { client, of } = await setup();
    FakeWebSocket.last.welcome({ users: [user("bob"), user("carol", { role: "guest" })] });
    FakeWebSocket.last.receive({ type: "user_joined", payload: user("dave") });
    FakeWebSocket.last.receive({ type: "user_left", payload: { userId: "carol" } });
    FakeWebSocket.last.receive({ type: "user_role_changed", payload: { userId: "bob", role: "admin" } });
    FakeWebSocket.last.receive({ type: "position_update", from: "dave", payload: { x: 1, y: 2 } });
    assert.deepEqual(Object.fromEntries(client.presence), {
      bob: user("bob", { role: "admin" }),
      dave: user("dave", { position: { x: 1, y: 2 } }),
    });
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["bob", "carol", "dave"],
    );
    assert.deepEqual(of("leave"), [["carol"]]);
    assert.deepEqual(of("position"), [["dave", { x: 1, y: 2 }]]);
    // One presence event per change of who is online or their role.
    assert.equal(of("presence").length, 4);
    assert.ok(of("presence").at(-1)[0] instanceof Map);
  });

  test("a reconnect does not make users who stayed leave and join again", async () => {
    const { clock, of, client } = await setup();
    FakeWebSocket.last.welcome({ users: [user("bob"), user("carol")] });
    const before = of("presence").length;
    FakeWebSocket.last.serverClose(1006);
    assert.equal(client.presence.size, 2, "kept while reconnecting");
    await clock.advance(1000);
    FakeWebSocket.last.welcome({ recovered: true, users: [user("bob"), user("carol")] });
    assert.equal(of("presence").length, before, "nothing changed, nothing emitted");
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(2000);
    FakeWebSocket.last.welcome({ recovered: true, users: [user("bob"), user("erin")] });
    // Carol is missing from the snapshot: she stays, with no connection, for
    // the grace period, then leaves.
    assert.deepEqual(of("leave"), []);
    assert.equal(client.presence.get("carol").connections, 0);
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["bob", "carol", "erin"],
    );
    await clock.advance(5000);
    assert.deepEqual(of("leave"), [["carol"]]);
    assert.deepEqual([...client.presence.keys()], ["bob", "erin"]);
  });

  test("after a server restart, users who come back within the grace never left", async () => {
    const { clock, of, client } = await setup();
    FakeWebSocket.last.welcome({ users: [user("bob"), user("carol")] });
    FakeWebSocket.last.serverClose(1001);
    await clock.advance(1000);
    // We are back first: the restarted server knows nobody yet.
    FakeWebSocket.last.welcome({ recovered: true, users: [] });
    await clock.advance(1000);
    FakeWebSocket.last.receive({ type: "user_joined", payload: user("bob") });
    FakeWebSocket.last.receive({ type: "user_joined", payload: user("carol") });
    await clock.advance(60_000);
    assert.deepEqual(of("leave"), []);
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["bob", "carol"],
    );
    assert.deepEqual(Object.fromEntries(client.presence), { bob: user("bob"), carol: user("carol") });
  });

  test("batched positions update every entry and emit one position each", async () => {
    const { client, of } = await setup({ positions: "batched" });
    FakeWebSocket.last.welcome({ users: [user("bob")] });
    FakeWebSocket.last.receive({
      type: "positions",
      payload: {
        positions: [
          { userId: "bob", x: 5, y: 6, roomId: "hall" },
          { userId: "me", x: 1, y: 1 },
        ],
      },
    });
    assert.deepEqual(of("position"), [
      ["bob", { x: 5, y: 6, roomId: "hall" }],
      ["me", { x: 1, y: 1 }],
    ]);
    assert.deepEqual(client.presence.get("bob").position, { x: 5, y: 6, roomId: "hall" });
  });
});

describe("presence diffs", () => {
  const state = (users, positions) => ({
    type: "presence_state",
    payload: positions ? { users, positions } : { users },
  });
  const diff = (payload) => ({ type: "presence_diff", payload });
  // An entry of a map folded from diffs: they carry no connection counts.
  const folded = (userId, extra = {}) => ({ userId, role: "member", connections: null, position: null, ...extra });

  test("presence=diff goes in the query, with since and positions", async () => {
    const { clock } = await setup({ presence: "diff", positions: "batched" });
    assert.equal(FakeWebSocket.last.url, "ws://router.test/websocket?positions=batched&presence=diff");
    FakeWebSocket.last.welcome({ epoch: "abc", seq: 7 });
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(1000);
    const query = new URL(FakeWebSocket.last.url).searchParams;
    assert.deepEqual(Object.fromEntries(query), { since: "abc.7", positions: "batched", presence: "diff" });
  });

  test("the default is the events contract, and another value is refused", async () => {
    await setup();
    assert.equal(new URL(FakeWebSocket.last.url).searchParams.has("presence"), false);
    assert.throws(
      () => new OfficeClient({ url: "ws://x", getToken: async () => "t", WebSocket: FakeWebSocket, presence: "all" }),
      /presence must be "events" or "diff"/,
    );
  });

  test("the state, then each diff, are folded into the map, this user left out", async () => {
    const { client, of } = await setup({ presence: "diff" });
    FakeWebSocket.last.welcome();
    assert.deepEqual(of("presence"), [], "nothing until the state");
    FakeWebSocket.last.receive(
      state({ admin: ["alice"], member: ["me", "bob", "carol"] }, { bob: { x: 5, y: 6, roomId: "hall" } }),
    );
    assert.deepEqual(Object.fromEntries(client.presence), {
      alice: folded("alice", { role: "admin" }),
      bob: folded("bob", { position: { x: 5, y: 6, roomId: "hall" } }),
      carol: folded("carol"),
    });
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["alice", "bob", "carol"],
    );
    FakeWebSocket.last.receive(diff({ joins: { member: ["dave", "erin"], guest: ["fay"] }, leaves: ["carol"] }));
    FakeWebSocket.last.receive(diff({ leaves: ["alice"] }));
    assert.deepEqual([...client.presence.keys()], ["bob", "dave", "erin", "fay"]);
    assert.deepEqual(client.presence.get("fay"), folded("fay", { role: "guest" }));
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["alice", "bob", "carol", "dave", "erin", "fay"],
    );
    assert.deepEqual(of("leave"), [["carol"], ["alice"]]);
    // One presence event for the state and one per diff, however many users it names.
    assert.equal(of("presence").length, 3);
    assert.deepEqual(Object.fromEntries(of("presence").at(-1)[0]), Object.fromEntries(client.presence));
  });

  test("a leave and a rejoin in one tick: leave, then join, the position forgotten", async () => {
    const { client, of } = await setup({ presence: "diff" });
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.receive(state({ member: ["me", "bob"] }, { bob: { x: 1, y: 1 } }));
    const seen = [];
    client.on("leave", (userId) => seen.push(["leave", userId, client.presence.has(userId)]));
    client.on("join", (entry) => seen.push(["join", entry.userId, client.presence.has(entry.userId)]));
    FakeWebSocket.last.receive(diff({ joins: { admin: ["bob"] }, leaves: ["bob"] }));
    // Each event sees the map as it is at that step.
    assert.deepEqual(seen, [
      ["leave", "bob", false],
      ["join", "bob", true],
    ]);
    assert.deepEqual(client.presence.get("bob"), folded("bob", { role: "admin" }));
    assert.deepEqual(of("leave"), [["bob"]]);
    assert.equal(of("presence").length, 2);
  });

  test("a join of a user in the map is a role change: no join, no leave", async () => {
    const { client, of } = await setup({ presence: "diff" });
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.receive(state({ member: ["me", "bob"] }));
    FakeWebSocket.last.receive({ type: "position_update", from: "bob", payload: { x: 2, y: 3 } });
    FakeWebSocket.last.receive(diff({ joins: { admin: ["bob"] } }));
    assert.deepEqual(client.presence.get("bob"), folded("bob", { role: "admin", position: { x: 2, y: 3 } }));
    assert.equal(of("presence").length, 2);
    // Our own role changing is a join of ours: not in the map, nothing emitted.
    FakeWebSocket.last.receive(diff({ joins: { admin: ["me"] } }));
    assert.equal(client.presence.has("me"), false);
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["bob"],
    );
    assert.deepEqual(of("leave"), []);
    assert.equal(of("presence").length, 2);
  });

  test("a newcomer's position that comes before the diff listing them is kept", async () => {
    const { client, of } = await setup({ presence: "diff" });
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.receive(state({ member: ["me"] }));
    FakeWebSocket.last.receive({ type: "position_update", from: "dave", payload: { x: 7, y: 8 } });
    FakeWebSocket.last.receive({ type: "position_update", from: "gone", payload: { x: 0, y: 0 } });
    FakeWebSocket.last.receive(diff({ joins: { member: ["dave"] } }));
    assert.deepEqual(of("join")[0][0], folded("dave", { position: { x: 7, y: 8 } }));
    // A stray position lasts until the next diff only: a user who left is not
    // brought back with it.
    FakeWebSocket.last.receive(diff({ leaves: ["dave"] }));
    FakeWebSocket.last.receive(diff({ joins: { member: ["gone"] } }));
    assert.deepEqual(client.presence.get("gone").position, null);
  });

  test("a reconnect's state keeps users who stayed without leave or join", async () => {
    const { clock, of, client } = await setup({ presence: "diff" });
    FakeWebSocket.last.welcome();
    FakeWebSocket.last.receive(state({ member: ["me", "bob", "carol", "dave"] }));
    const before = of("presence").length;
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(1000);
    FakeWebSocket.last.welcome({ recovered: true });
    assert.equal(client.presence.size, 3, "kept until the state comes");
    FakeWebSocket.last.receive(state({ member: ["bob", "me", "carol"], admin: ["erin"] }));
    // Dave is missing from the state: he stays, with no connection, for the
    // grace period; bob and carol never left.
    assert.deepEqual([...client.presence.keys()], ["bob", "carol", "erin", "dave"]);
    assert.equal(client.presence.get("dave").connections, 0);
    assert.equal(of("presence").length, before + 1);
    assert.deepEqual(of("leave"), []);
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["bob", "carol", "dave", "erin"],
    );
    // A server restart: carol comes back within the grace, in a diff.
    FakeWebSocket.last.serverClose(1001);
    await clock.advance(1000);
    FakeWebSocket.last.welcome({ recovered: true });
    FakeWebSocket.last.receive(state({ member: ["me"] }));
    FakeWebSocket.last.receive(diff({ joins: { member: ["carol"] } }));
    await clock.advance(5000);
    assert.deepEqual([...client.presence.keys()], ["carol"]);
    assert.deepEqual(client.presence.get("carol"), folded("carol"));
    assert.deepEqual(of("leave").map(([id]) => id).sort(), ["bob", "dave", "erin"]);
    assert.deepEqual(
      of("join").map(([u]) => u.userId),
      ["bob", "carol", "dave", "erin"],
    );
  });
});

describe("positions", () => {
  test("200 calls in a second send at most the rate, spaced, the latest last", async () => {
    const { client, clock } = await setup();
    FakeWebSocket.last.welcome();
    const sentAt = [];
    const ws = FakeWebSocket.last;
    const send = ws.send.bind(ws);
    ws.send = (text) => {
      sentAt.push(clock.time);
      send(text);
    };
    for (let i = 0; i < 200; i++) {
      client.sendPosition({ x: i, y: -i, roomId: "hall" });
      await clock.advance(5);
    }
    await clock.advance(1000);
    const frames = ws.frames;
    assert.ok(frames.length <= 11, `${frames.length} frames`);
    assert.ok(frames.length >= 9, `${frames.length} frames`);
    assert.deepEqual(frames.at(-1), { type: "position_update", payload: { x: 199, y: -199, roomId: "hall" } });
    for (let i = 1; i < sentAt.length; i++) assert.ok(sentAt[i] - sentAt[i - 1] >= 100);
  });

  test("the first position goes at once", async () => {
    const { client } = await setup();
    FakeWebSocket.last.welcome();
    client.sendPosition({ x: 1, y: 2 });
    assert.deepEqual(FakeWebSocket.last.frames, [{ type: "position_update", payload: { x: 1, y: 2 } }]);
  });

  test("positions set while away: only the latest is sent on connect; it is sent again after a restart", async () => {
    const { client, clock } = await setup();
    client.sendPosition({ x: 1, y: 1 });
    client.sendPosition({ x: 2, y: 2 });
    FakeWebSocket.last.welcome();
    assert.deepEqual(FakeWebSocket.last.frames, [{ type: "position_update", payload: { x: 2, y: 2 } }]);
    FakeWebSocket.last.serverClose(1001);
    await clock.advance(1000);
    FakeWebSocket.last.welcome();
    assert.deepEqual(FakeWebSocket.last.frames, [{ type: "position_update", payload: { x: 2, y: 2 } }]);
  });

  test("invalid positions are refused at the call", async () => {
    const { client } = await setup();
    assert.throws(() => client.sendPosition({ x: Number.NaN, y: 1 }), TypeError);
    assert.throws(() => client.sendPosition({ x: 1 }), TypeError);
    assert.throws(() => client.sendPosition({ x: 1, y: 1, roomId: " " }), TypeError);
  });
});

describe("token refresh", () => {
  test("refreshes at four fifths of the lifetime with refresh_token, then again", async () => {
    const { clock, tokens, of } = await setup();
    FakeWebSocket.last.welcome();
    await clock.advance(79_000);
    assert.equal(tokens.length, 1);
    await clock.advance(1_000);
    assert.deepEqual(
      tokens.map((t) => t.reason),
      ["connect", "refresh"],
    );
    assert.deepEqual(FakeWebSocket.last.frames, [{ type: "refresh_token", payload: { token: tokens[1].token } }]);
    FakeWebSocket.last.receive({ type: "token_refreshed", payload: { expiresAt: 123 } });
    assert.deepEqual(of("token"), [[{ expiresAt: 123 }]]);
    await clock.advance(80_000);
    assert.equal(tokens.length, 3);
    assert.equal(FakeWebSocket.all.length, 1, "no reconnect needed");
  });

  test("a refused refresh is reported; the 4001 that follows reconnects at once", async () => {
    const { clock, of, tokens } = await setup();
    FakeWebSocket.last.welcome();
    await clock.advance(80_000);
    FakeWebSocket.last.receive({
      type: "error",
      payload: { code: "refresh_refused", message: "$.payload.token: token expired" },
    });
    assert.deepEqual(of("error"), [[{ code: "refresh_refused", message: "$.payload.token: token expired" }]]);
    FakeWebSocket.last.serverClose(4001);
    await clock.advance(0);
    assert.equal(FakeWebSocket.all.length, 2);
    assert.equal(tokens.at(-1).reason, "connect");
  });

  test("an overdue refresh runs when the page becomes visible again", async () => {
    const { clock, document, tokens } = await setup();
    FakeWebSocket.last.welcome();
    // The page slept: time moved, its timers did not fire.
    clock.time += 90_000;
    document.dispatch("visibilitychange");
    await settle();
    assert.equal(tokens.at(-1).reason, "refresh");
  });

  test("claims are read from the token without verifying it", () => {
    assert.deepEqual(readClaims(fakeToken({ sub: "é", exp: 5 })), { sub: "é", exp: 5 });
    assert.equal(readClaims("nope"), null);
  });
});

describe("network and page visibility", () => {
  test("offline pauses reconnecting; online reconnects within a second", async () => {
    const { clock, window, navigator } = await setup();
    clock.randomValue = 0.9;
    for (let i = 0; i < 6; i++) {
      FakeWebSocket.last.serverClose(1006);
      await clock.advance(clock.pending[0]);
    }
    FakeWebSocket.last.serverClose(1006);
    navigator.onLine = false;
    window.dispatch("offline");
    assert.deepEqual(clock.pending, []);
    await clock.advance(120_000);
    const count = FakeWebSocket.all.length;
    navigator.onLine = true;
    window.dispatch("online");
    assert.ok(clock.pending[0] < 1000);
    await clock.advance(1000);
    assert.equal(FakeWebSocket.all.length, count + 1);
  });

  test("a drop while offline waits for online instead of a timer", async () => {
    const { clock, window, navigator } = await setup();
    FakeWebSocket.last.welcome();
    navigator.onLine = false;
    FakeWebSocket.last.serverClose(1006);
    assert.deepEqual(clock.pending.length, 0);
    navigator.onLine = true;
    window.dispatch("online");
    await clock.advance(1000);
    assert.equal(FakeWebSocket.all.length, 2);
  });

  test("online, offline and visibility never open a second connection", async () => {
    const { clock, window, document } = await setup();
    FakeWebSocket.last.welcome();
    window.dispatch("offline");
    window.dispatch("online");
    document.dispatch("visibilitychange");
    await clock.advance(60_000);
    assert.equal(FakeWebSocket.all.length, 1);
    // While an attempt is under way (the socket is opening), neither.
    FakeWebSocket.last.serverClose(1006);
    await clock.advance(clock.pending[0]);
    window.dispatch("online");
    document.dispatch("visibilitychange");
    await clock.advance(60_000);
    assert.equal(FakeWebSocket.all.length, 2);
  });

  test("the page becoming visible cuts a long backoff short", async () => {
    const { clock, document } = await setup();
    clock.randomValue = 0.99;
    for (let i = 0; i < 6; i++) {
      FakeWebSocket.last.serverClose(1006);
      await clock.advance(clock.pending[0]);
    }
    FakeWebSocket.last.serverClose(1006);
    assert.ok(clock.pending[0] > 20_000);
    document.dispatch("visibilitychange");
    assert.ok(clock.pending[0] < 1000);
  });
});
