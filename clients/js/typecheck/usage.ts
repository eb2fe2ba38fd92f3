// Compiled by tsc (never run): the declarations describe the API as a TypeScript
// application uses it. A mistake in officerouter-client.d.ts or frames.d.ts, or a
// name one expects of the other, fails `tsc -p clients/js`.
import {
  DEFAULTS,
  OfficeClient,
  closeAction,
  type ClientState,
  type PresenceDiffFrame,
  type PresenceStateFrame,
  type PresenceUser,
  type ServerFrame,
  type StateInfo,
} from "../officerouter-client.js";

const client = new OfficeClient({
  url: ["wss://a.example/websocket", "wss://b.example/websocket"],
  getToken: async ({ reason }) => (reason === "refresh" ? "t2" : "t1"),
  positions: "batched",
  presence: "diff",
  positionRate: 5,
  presenceGrace: DEFAULTS.presenceGrace * 2,
});

const off: () => void = client.on("state", (state: ClientState, info: StateInfo) => {
  if (state === "reconnecting") console.log(info.attempt, info.delay, info.code);
  if (state === "open") console.log(info.epoch, info.recovered);
});
off();
client.on("message", (frame) => {
  if (frame.type === "room_updated") console.log(frame.seq);
});
client.on("frame", (frame: ServerFrame) => {
  if (frame.type === "connected") console.log(frame.payload.connectionId);
  if (frame.type === "presence_state") console.log(frame.payload.users?.admin, frame.payload.positions);
  if (frame.type === "presence_diff") console.log(frame.payload.joins, frame.payload.leaves?.length);
});
const diffs: PresenceDiffFrame[] = [];
const states: PresenceStateFrame[] = [{ type: "presence_state", payload: { users: { member: ["bob"] } } }];
console.log(diffs.length, states[0].payload.users);
client.on("presence", (users: Map<string, PresenceUser>) => {
  for (const [id, user] of users) console.log(id, user.role, user.connections ?? "unknown", user.position?.x);
});
client.on("join", (user) => console.log(user.userId));
client.on("leave", (userId: string) => console.log(userId));
client.on("position", (userId: string, position) => console.log(userId, position.x, position.roomId));
client.on("resync", (connected) => console.log(connected.epoch));
client.on("token", ({ expiresAt }) => console.log(expiresAt));
client.on("error", (error) => console.log(error.code, error.message));
client.sendPosition({ x: 1, y: 2, roomId: "hall" });
const sent: boolean = client.send("desk_ping", {});
const since: string | null = client.since;
const action: "stop" | "token" | "soon" | "backoff" = closeAction(4003);
console.log(sent, since, action, client.state, client.presence.size, client.connection?.userId);
client.close();

new OfficeClient({ url: async ({ attempt }) => `wss://n${attempt}.example/websocket`, getToken: () => "t" });
// @ts-expect-error positions is "plain" or "batched"
new OfficeClient({ url: "wss://x", getToken: () => "t", positions: "all" });
// @ts-expect-error presence is "events" or "diff"
new OfficeClient({ url: "wss://x", getToken: () => "t", presence: "diffs" });
// @ts-expect-error no such event
client.on("nope", () => {});
