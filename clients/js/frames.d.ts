// PROVISIONAL, written by hand: `officerouter schema --typescript` generates
// this file from the message catalog, and the generated one replaces it.
// officerouter-client.d.ts imports only ServerFrame, ClientFrame and ConnectedPayload.

export type Role = "owner" | "admin" | "member" | "guest" | "pending_guest";

export interface ConnectedPayload {
  connectionId: string;
  userId: string;
  orgId: string;
  role: Role;
  epoch: string;
  seq: number;
  recovered?: boolean;
}
export interface ConnectedFrame { type: "connected"; payload: ConnectedPayload }

export interface PositionUpdatePayload { x: number; y: number; roomId?: string }
export interface PositionUpdateFrame { type: "position_update"; from?: string; payload: PositionUpdatePayload }

export interface UserJoinedPayload {
  userId: string;
  role: Role;
  connections: number;
  position: PositionUpdatePayload | null;
}
export interface UserJoinedFrame { type: "user_joined"; payload: UserJoinedPayload }

export interface PresencePayload { users: UserJoinedPayload[] }
export interface PresenceFrame { type: "presence"; payload: PresencePayload }

export interface UserLeftPayload { userId: string }
export interface UserLeftFrame { type: "user_left"; payload: UserLeftPayload }

export interface UserRoleChangedPayload { userId: string; role: Role }
export interface UserRoleChangedFrame { type: "user_role_changed"; payload: UserRoleChangedPayload }

export interface PositionsPayload {
  positions: Array<{ userId: string; x: number; y: number; roomId?: string }>;
}
export interface PositionsFrame { type: "positions"; payload: PositionsPayload }

export interface RoomUpdatedPayload { roomId: string; name: string }
export interface RoomUpdatedFrame { type: "room_updated"; seq?: number; payload: RoomUpdatedPayload }

export interface SpaceDeletedPayload { spaceId: string; name: string }
export interface SpaceDeletedFrame { type: "space_deleted"; seq?: number; payload: SpaceDeletedPayload }

export interface UserUpdatedPayload { userId: string; role: Role }
export interface UserUpdatedFrame { type: "user_updated"; seq?: number; payload: UserUpdatedPayload }

export interface UserBannedPayload { userId: string; reason: string }
export interface UserBannedFrame { type: "user_banned"; seq?: number; payload: UserBannedPayload }

export interface GuestKnockPayload { guestId: string; name?: string }
export interface GuestKnockFrame { type: "guest_knock"; seq?: number; payload: GuestKnockPayload }

export interface TokenRefreshedPayload { expiresAt: number }
export interface TokenRefreshedFrame { type: "token_refreshed"; payload: TokenRefreshedPayload }

export interface ErrorPayload { code: string; message: string }
export interface ErrorFrame { type: "error"; payload: ErrorPayload }

export interface RefreshTokenPayload { token: string }
export interface RefreshTokenFrame { type: "refresh_token"; payload: RefreshTokenPayload }

/** Every frame the server sends. */
export type ServerFrame =
  | ConnectedFrame
  | PresenceFrame
  | UserJoinedFrame
  | UserLeftFrame
  | UserRoleChangedFrame
  | RoomUpdatedFrame
  | SpaceDeletedFrame
  | UserUpdatedFrame
  | UserBannedFrame
  | GuestKnockFrame
  | PositionUpdateFrame
  | PositionsFrame
  | TokenRefreshedFrame
  | ErrorFrame;

/** Every frame a client may send. */
export type ClientFrame = PositionUpdateFrame | RefreshTokenFrame;
