/* wsgen: the officerouter benchmark's load generator.
 *
 * One thread, one epoll set, non-blocking sockets, 127.0.0.1 only. It opens N
 * WebSocket clients (RFC 6455, masked client frames, one RS256 JWT per client as the
 * single Sec-WebSocket-Protocol value, Sec-WebSocket-Accept verified) and, for the
 * broadcast scenarios, P keep-alive HTTP/1.1 publisher connections that POST
 * /internal/notify. Send times (CLOCK_MONOTONIC, microseconds) travel in the payload
 * as "roomId":"ts-<us>" and are read back from every delivered frame.
 *
 * Scenarios (--scenario):
 *   s1  broadcast fan-out: all clients in one org, publishers POST broadcast
 *       room_updated; --rate 0 = closed loop (max), else open loop at --rate
 *       deliveries/s (notify rate = rate / clients in the org).
 *   s2  position chatter: each client sends position_update at --hz, phases spread.
 *   s2b s2 with position batching: clients open /websocket?positions=batched and
 *       receive one "positions" frame per server tick; every entry of it
 *       ({userId,x,y,roomId}) is one delivery, timed from its own "ts-<us>". The
 *       entries about the receiver's own user are counted apart.
 *   s3  idle: connect, settle, report READY on stderr, hold until SIGUSR1 or --hold.
 *   s4  many orgs: like s1, each notify to an org picked at random (the orgs are
 *       learnt from the clients' "connected" frames).
 *   s5  connection storm: time for N clients to connect and get "connected",
 *       at most --inflight handshakes in flight.
 *   s6  join storm: s5, then until every client's view of who is online, folded
 *       from its presence frames, is the whole org (u0..u<N-1>; without itself
 *       in the plain contract). --presence plain: "presence" + user_joined/left;
 *       --presence diff: clients open /websocket?presence=diff and fold
 *       presence_state + presence_diff. Bounded by --ready-timeout.
 *
 * Several servers (a cluster on one Redis): --ports P1,P2,... spreads the clients
 * over ports (client i on port i mod k) and --notify-ports over the publishers
 * (publisher j on port j mod m); both default to --port. With more than one client
 * port, s2/s2b latency is also split by whether sender and receiver are on the same
 * port ("local") or not ("cross"); the sender of a frame is its "from"/"userId",
 * u<i> being client i (bench/tokens.py).
 *
 * Output: one JSON object on stdout; progress and diagnostics on stderr. The
 * measurement window's edges are announced on stderr ("wsgen: WINDOW start",
 * "wsgen: WINDOW end") so that a driver can sample other processes at them.
 * Every loop is bounded in time (--ready-timeout, --warmup + --duration, --drain,
 * --hold). Build: make (gcc, no external libraries).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wscommon.h"

/* ------------------------------------------------------------------ options */

static const char *opt_scenario = "s1";
static const char *opt_tokens = NULL;
static const char *opt_cf_id = "bench-client";
static const char *opt_cf_secret = "bench-secret";
static int opt_port = 0;
#define MAX_PORTS 16
static int client_ports[MAX_PORTS], n_client_ports; /* --ports (default: --port) */
static int notify_ports[MAX_PORTS], n_notify_ports; /* --notify-ports (default: --port) */
static int opt_n = 100;
static int opt_publishers = 4;
static int opt_batch = 1; /* notifications per POST: >1 sends a JSON array (a batch) */
static int opt_inflight = 128;
static int opt_pgid = 0;
static double opt_rate = 0;      /* deliveries/s target; 0 = closed loop */
static double opt_hz = 10;
static double opt_duration = 10;
static double opt_warmup = 2;
static double opt_drain = 5;
static double opt_settle = 3;
static double opt_hold = 30;
static double opt_ready_timeout = 60;
static uint64_t opt_seed = 0x9E3779B97F4A7C15ull;
static int opt_presence_diff = 0; /* s6: --presence diff */

static void usage(void) {
  fprintf(stderr,
          "usage: wsgen --scenario s1|s2|s2b|s3|s4|s5 --port PORT --tokens FILE -n N\n"
          "  [--publishers P] [--rate DELIVERIES_PER_S] [--hz R] [--duration S] [--warmup S]\n"
          "  [--drain S] [--settle S] [--hold S] [--inflight K] [--ready-timeout S]\n"
          "  [--server-pgid PGID] [--cf-id ID] [--cf-secret SECRET] [--seed X]\n"
          "  [--ports P1,P2,...] [--notify-ports P1,P2,...] [--batch N] [--presence plain|diff]\n");
  exit(64);
}

static void fatal(const char *what) {
  fprintf(stderr, "wsgen: %s: %s\n", what, strerror(errno));
  exit(70);
}

/* ------------------------------------------------------------------ histogram */
/* Log-linear: exact below 128 us, then 64 sub-buckets per power of two (<1.6 %). */
#define H_LIN 128
#define H_SUB 64
#define H_OCT 36
typedef struct {
  uint64_t b[H_LIN + H_OCT * H_SUB];
  uint64_t n, max;
  double sum;
} hist_t;

static void h_add(hist_t *h, uint64_t v) {
  size_t i;
  if (v < H_LIN) {
    i = v;
  } else {
    int e = 63 - __builtin_clzll(v); /* >= 7 */
    int o = e - 7;
    if (o >= H_OCT) { o = H_OCT - 1; e = o + 7; v = (2ull << e) - 1; }
    i = H_LIN + (size_t)o * H_SUB + ((v >> (e - 6)) & (H_SUB - 1));
  }
  h->b[i]++;
  h->n++;
  h->sum += (double)v;
  if (v > h->max) h->max = v;
}

static double h_lower(size_t i) {
  if (i < H_LIN) return (double)i;
  size_t o = (i - H_LIN) / H_SUB, s = (i - H_LIN) % H_SUB;
  int e = (int)o + 7;
  return (double)((1ull << e) + (s << (e - 6)));
}

static double h_pct(const hist_t *h, double p) {
  if (!h->n) return -1;
  uint64_t rank = (uint64_t)(p / 100.0 * (double)h->n);
  if (rank >= h->n) rank = h->n - 1;
  uint64_t acc = 0;
  size_t nb = sizeof h->b / sizeof h->b[0];
  for (size_t i = 0; i < nb; i++) {
    acc += h->b[i];
    if (acc > rank) {
      double lo = h_lower(i), hi = i + 1 < nb ? h_lower(i + 1) : lo;
      double mid = (lo + hi) / 2;
      return mid > (double)h->max ? (double)h->max : mid;
    }
  }
  return (double)h->max;
}

static void h_json(const hist_t *h, const char *name) {
  printf("\"%s\":{\"n\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f}", name,
         (unsigned long long)h->n, h_pct(h, 50) / 1000, h_pct(h, 90) / 1000, h_pct(h, 99) / 1000,
         h_pct(h, 99.9) / 1000, (double)h->max / 1000, h->n ? h->sum / (double)h->n / 1000 : -1.0);
}

/* ------------------------------------------------------------------ buffers */
typedef struct {
  char *p;
  size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t need) {
  if (b->cap >= need) return;
  size_t nc = b->cap ? b->cap : 512;
  while (nc < need) nc *= 2;
  char *p = realloc(b->p, nc);
  if (!p) fatal("out of memory");
  b->p = p;
  b->cap = nc;
}

static void buf_put(buf_t *b, const char *d, size_t n) {
  buf_reserve(b, b->len + n);
  memcpy(b->p + b->len, d, n);
  b->len += n;
}

static void buf_drop(buf_t *b, size_t n) {
  if (n >= b->len) { b->len = 0; return; }
  memmove(b->p, b->p + n, b->len - n);
  b->len -= n;
}

static void buf_free(buf_t *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ connections */
enum { ST_IDLE, ST_CONNECTING, ST_HANDSHAKE, ST_WAIT_CONNECTED, ST_READY, ST_PUB, ST_DEAD };

typedef struct conn {
  int fd;
  int idx;
  int org;  /* index into the org table, -1 until "connected" */
  int user; /* index into the user table (s2b), -1 until "connected" */
  uint8_t is_pub, state, frag_op, want_out;
  buf_t in, out, frag;
  char accept[29]; /* expected Sec-WebSocket-Accept during the handshake */
  uint64_t t_start;
  /* publisher */
  int busy;
  uint64_t req_stamp, req_sent;
} conn_t;

static int ep;
static conn_t *clients, *pubs;
static char **tokens;
static int ntokens;
static uint64_t rng = 88172645463325252ull;
static volatile sig_atomic_t got_usr1;

/* counters */
static int n_started, n_inflight, n_ready, n_failed;
static uint64_t t_storm0, t_storm_end;
static hist_t h_hs, h_lat, h_rtt, h_lag;
static hist_t h_local, h_cross; /* s2/s2b with several client ports: by sender's port */
static uint64_t rx_ts_total, rx_ts_win, rx_reads_win, rx_other, rx_error_frames, rx_bytes_win;
static uint64_t notify_sent, notify_ok, notify_ok_win, claimed_total, claimed_win, notify_http_err;
static uint64_t pub_reconnects, pub_lost_replies;
static uint64_t s2_sent, s2_sent_win, s2_expected_total, s2_skipped;
static int in_window;
/* s2b: batched positions. rx_ts_* count the entries about other users. */
static int batched;
static hist_t h_own;
static uint64_t pb_frames_total, pb_frames_win, pb_own_total, pb_own_win, pb_bad_entries, pb_unknown_user,
    pb_unbatched_frames;
static uint64_t pb_last_frame_us; /* when the last "positions" frame arrived */
static uint8_t *pb_heard;         /* window: bit [receiver][sender], by user index */
static size_t pb_stride;
/* errors */
static uint64_t e_connect, e_http_status, e_http401, e_accept, e_subproto, e_protocol, e_closed, e_eof, e_io,
    e_not_connected, e_pub;

/* orgs learnt from "connected" frames */
#define ORG_MAX 65536
static char *org_name[ORG_MAX];
static int org_members[ORG_MAX];
static int n_orgs;
static int org_hash[ORG_MAX * 2];

static uint32_t str_hash(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return h;
}

static int org_index(const char *s, size_t n) {
  uint32_t h = str_hash(s, n) & (ORG_MAX * 2 - 1);
  for (int probe = 0; probe < ORG_MAX * 2; probe++) {
    int slot = org_hash[h];
    if (slot == 0) {
      if (n_orgs >= ORG_MAX) return -1;
      org_name[n_orgs] = strndup(s, n);
      org_hash[h] = n_orgs + 1;
      return n_orgs++;
    }
    if (strlen(org_name[slot - 1]) == n && memcmp(org_name[slot - 1], s, n) == 0) return slot - 1;
    h = (h + 1) & (ORG_MAX * 2 - 1);
  }
  return -1;
}

/* users learnt from "connected" frames (s2b): userId -> user index */
static char **user_name;
static int n_users, user_cap;
static int *user_hash; /* 0 = empty, else index + 1 */
static size_t user_hash_size;

static int user_lookup(const char *s, size_t n, int create) {
  if (!user_hash) return -1;
  size_t h = str_hash(s, n) & (user_hash_size - 1);
  for (size_t probe = 0; probe < user_hash_size; probe++) {
    int slot = user_hash[h];
    if (slot == 0) {
      if (!create || n_users >= user_cap) return -1;
      user_name[n_users] = strndup(s, n);
      user_hash[h] = n_users + 1;
      return n_users++;
    }
    if (strlen(user_name[slot - 1]) == n && memcmp(user_name[slot - 1], s, n) == 0) return slot - 1;
    h = (h + 1) & (user_hash_size - 1);
  }
  return -1;
}

static int diag_budget = 20;
static void diag(const conn_t *c, const char *what) {
  if (diag_budget-- > 0)
    fprintf(stderr, "wsgen: %s %d: %s\n", c->is_pub ? "publisher" : "client", c->idx, what);
}

static void ep_set(conn_t *c, int want_out) {
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) fatal("epoll_ctl");
  c->want_out = (uint8_t)want_out;
}

static void conn_kill(conn_t *c, uint64_t *counter, const char *why) {
  if (c->state == ST_DEAD || c->state == ST_IDLE) return;
  if (counter) (*counter)++;
  if (why) diag(c, why);
  if (!c->is_pub) {
    if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE || c->state == ST_WAIT_CONNECTED) {
      n_inflight--;
      n_failed++;
    } else if (c->state == ST_READY) {
      n_ready--;
      if (c->org >= 0) org_members[c->org]--;
    }
  } else if (c->busy) {
    pub_lost_replies++;
    c->busy = 0;
  }
  c->state = ST_DEAD;
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  buf_free(&c->in);
  buf_free(&c->out);
  buf_free(&c->frag);
}

static void flush_out(conn_t *c) {
  while (c->out.len) {
    ssize_t w = write(c->fd, c->out.p, c->out.len);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      conn_kill(c, &e_io, "write failed");
      return;
    }
    buf_drop(&c->out, (size_t)w);
  }
  int want = c->out.len > 0;
  if (want != c->want_out) ep_set(c, want);
}

static void send_bytes(conn_t *c, const char *d, size_t n) {
  if (c->fd < 0) return;
  if (!c->out.len) {
    ssize_t w = write(c->fd, d, n);
    if (w == (ssize_t)n) return;
    if (w < 0) {
      if (errno != EAGAIN && errno != EINTR) { conn_kill(c, &e_io, "write failed"); return; }
      w = 0;
    }
    d += w;
    n -= (size_t)w;
  }
  buf_put(&c->out, d, n);
  if (!c->want_out) ep_set(c, 1);
}

/* A masked client frame (RFC 6455 5.3: every client frame is masked, fresh key). */
static void send_frame(conn_t *c, int opcode, const char *payload, size_t n) {
  char f[14 + 1024];
  if (n > 1024) return;
  size_t h = 0;
  f[h++] = (char)(0x80 | opcode);
  if (n < 126) {
    f[h++] = (char)(0x80 | n);
  } else {
    f[h++] = (char)(0x80 | 126);
    f[h++] = (char)(n >> 8);
    f[h++] = (char)(n & 255);
  }
  uint32_t key = (uint32_t)rng_next(&rng);
  unsigned char mk[4];
  memcpy(mk, &key, 4);
  memcpy(f + h, mk, 4);
  h += 4;
  for (size_t i = 0; i < n; i++) f[h + i] = (char)(payload[i] ^ mk[i & 3]);
  send_bytes(c, f, h + n);
}

/* The server port of a client or publisher. */
static int conn_port(const conn_t *c) {
  return c->is_pub ? notify_ports[c->idx % n_notify_ports] : client_ports[c->idx % n_client_ports];
}

static int open_socket(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fatal("socket (open-files limit?)");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static void conn_start(conn_t *c) {
  c->fd = open_socket(conn_port(c));
  c->t_start = mono_us();
  if (!c->is_pub) { n_started++; n_inflight++; }
  if (c->fd < 0) {
    c->state = ST_CONNECTING;
    conn_kill(c, &e_connect, strerror(errno));
    return;
  }
  c->state = ST_CONNECTING;
  c->org = -1;
  c->user = -1;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) fatal("epoll_ctl add");
  c->want_out = 1;
}

static void send_handshake(conn_t *c) {
  unsigned char raw[16];
  for (int i = 0; i < 16; i += 8) {
    uint64_t r = rng_next(&rng);
    memcpy(raw + i, &r, 8);
  }
  char key[32];
  base64_encode(raw, 16, key);
  ws_accept(key, c->accept);
  const char *tok = tokens[c->idx];
  size_t cap = strlen(tok) + 512;
  char *req = malloc(cap);
  if (!req) fatal("out of memory");
  int n = snprintf(req, cap,
                   "GET /websocket%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
                   batched ? "?positions=batched" : opt_presence_diff ? "?presence=diff" : "", conn_port(c), key, tok);
  c->state = ST_HANDSHAKE;
  send_bytes(c, req, (size_t)n);
  free(req);
}

/* ------------------------------------------------------------------ tiny JSON readers */
/* The value of a top-level-ish string field "name": tolerant of spaces. */
static int json_str(const char *p, size_t n, const char *name, const char **val, size_t *vlen) {
  size_t nl = strlen(name);
  const char *end = p + n, *q = p;
  while ((q = memmem(q, (size_t)(end - q), name, nl)) != NULL) {
    const char *r = q + nl;
    int quoted = q > p && q[-1] == '"';
    q = r;
    if (!quoted || r >= end || *r != '"') continue;
    r++;
    while (r < end && (*r == ' ' || *r == '\t')) r++;
    if (r >= end || *r != ':') continue;
    r++;
    while (r < end && (*r == ' ' || *r == '\t')) r++;
    if (r >= end || *r != '"') continue;
    r++;
    const char *s = r;
    while (r < end && *r != '"') r++;
    if (r >= end) return 0;
    *val = s;
    *vlen = (size_t)(r - s);
    return 1;
  }
  return 0;
}

static int json_ts(const char *p, size_t n, uint64_t *ts) {
  const char *q = memmem(p, n, "\"ts-", 4);
  if (!q) return 0;
  q += 4;
  const char *end = p + n;
  uint64_t v = 0;
  int digits = 0;
  while (q < end && *q >= '0' && *q <= '9') { v = v * 10 + (uint64_t)(*q - '0'); q++; digits++; }
  if (!digits) return 0;
  *ts = v;
  return 1;
}

/* ------------------------------------------------------------------ receiving */
/* With several client ports: whether the sender u<i> (client i) is on the receiver's
 * port. Returns -1 when it cannot tell. */
static int same_port(const conn_t *c, const char *uid, size_t ul) {
  if (n_client_ports < 2 || ul < 2 || uid[0] != 'u') return -1;
  long i = 0;
  for (size_t k = 1; k < ul; k++) {
    if (uid[k] < '0' || uid[k] > '9') return -1;
    i = i * 10 + (uid[k] - '0');
  }
  return (int)(i % n_client_ports) == c->idx % n_client_ports;
}

static void add_split(const conn_t *c, const char *uid, size_t ul, uint64_t lat) {
  int same = same_port(c, uid, ul);
  if (same == 1) h_add(&h_local, lat);
  else if (same == 0) h_add(&h_cross, lat);
}

/* s2b: one "positions" frame, {"type":"positions","payload":{"positions":[{...},...]}}.
 * Entries are flat objects (no nested braces or brackets; user ids are u<i>), so each
 * one is the span from a '{' to the next '}' inside the array; keys in any order,
 * any spacing. */
static void on_positions(conn_t *c, const char *p, size_t n) {
  const char *end = p + n;
  const char *q = memchr(p, '[', n);
  const char *aend = memrchr(p, ']', n);
  uint64_t now = mono_us();
  pb_last_frame_us = now;
  pb_frames_total++;
  if (in_window) pb_frames_win++;
  if (!q || !aend || aend < q) { pb_bad_entries++; return; }
  end = aend;
  uint8_t *row = in_window && pb_heard && c->user >= 0 ? pb_heard + (size_t)c->user * pb_stride : NULL;
  for (;;) {
    const char *o = memchr(q, '{', (size_t)(end - q));
    if (!o) break;
    const char *e = memchr(o, '}', (size_t)(end - o));
    if (!e) { pb_bad_entries++; break; }
    q = e + 1;
    const char *uid;
    size_t ul;
    uint64_t ts;
    if (!json_str(o, (size_t)(e - o), "userId", &uid, &ul) || !json_ts(o, (size_t)(e - o), &ts)) {
      pb_bad_entries++;
      continue;
    }
    int u = user_lookup(uid, ul, 0);
    if (u < 0) pb_unknown_user++;
    if (u >= 0 && u == c->user) {
      pb_own_total++;
      if (in_window) { pb_own_win++; h_add(&h_own, now > ts ? now - ts : 0); }
      continue;
    }
    rx_ts_total++;
    if (in_window) {
      rx_ts_win++;
      h_add(&h_lat, now > ts ? now - ts : 0);
      add_split(c, uid, ul, now > ts ? now - ts : 0);
      if (row && u >= 0) row[u >> 3] |= (uint8_t)(1u << (u & 7));
    }
  }
}

/* s6: each client's view of who is online, a bit per user u<i> (user i = client i). */
static int views;                /* s6 */
static uint8_t *pv_bits;         /* bit [client][user] */
static size_t pv_stride;
static int *pv_count;            /* users in each client's view */
static uint8_t *pv_done;         /* each client's view is the whole org */
static int pv_complete, pv_expected;
static uint64_t t_view_end, pv_frames, pv_bytes, pv_unknown, pv_bad, pv_doubled, pv_missing_leave;

static void pv_check(conn_t *c) {
  int done = pv_count[c->idx] == pv_expected;
  if (done != pv_done[c->idx]) {
    pv_done[c->idx] = (uint8_t)done;
    pv_complete += done ? 1 : -1;
    if (done) t_view_end = mono_us();
  }
}

/* Add (add=1) or remove a user "u<i>" to/from a client's view. */
static void pv_apply(conn_t *c, const char *uid, size_t ul, int add) {
  long u = 0;
  if (ul < 2 || uid[0] != 'u') { pv_unknown++; return; }
  for (size_t k = 1; k < ul; k++) {
    if (uid[k] < '0' || uid[k] > '9' || u > opt_n) { pv_unknown++; return; }
    u = u * 10 + (uid[k] - '0');
  }
  if (u >= opt_n) { pv_unknown++; return; }
  uint8_t *byte = pv_bits + (size_t)c->idx * pv_stride + (size_t)(u >> 3);
  uint8_t bit = (uint8_t)(1u << (u & 7));
  if (add) {
    if (*byte & bit) { pv_doubled++; return; }
    *byte |= bit;
    pv_count[c->idx]++;
  } else {
    if (!(*byte & bit)) { pv_missing_leave++; return; }
    *byte &= (uint8_t)~bit;
    pv_count[c->idx]--;
  }
}

/* Every string of [p, end) that is not an object key is a user id. */
static void pv_ids(conn_t *c, const char *p, const char *end, int add) {
  while (p < end) {
    const char *q = memchr(p, '"', (size_t)(end - p));
    if (!q) return;
    const char *e = memchr(q + 1, '"', (size_t)(end - q - 1));
    if (!e) { pv_bad++; return; }
    const char *r = e + 1;
    while (r < end && (*r == ' ' || *r == '\t')) r++;
    if (r >= end || *r != ':') pv_apply(c, q + 1, (size_t)(e - q - 1), add);
    p = e + 1;
  }
}

/* The span after "name": from its opening char (open) to the matching close (no nesting inside). */
static int pv_span(const char *p, size_t n, const char *name, char open, char close, const char **a, const char **b) {
  const char *q = memmem(p, n, name, strlen(name));
  if (!q) return 0;
  const char *end = p + n;
  q = memchr(q, open, (size_t)(end - q));
  if (!q) return 0;
  const char *e = memchr(q, close, (size_t)(end - q));
  if (!e) return 0;
  *a = q + 1;
  *b = e;
  return 1;
}

static void pv_reset(conn_t *c) {
  memset(pv_bits + (size_t)c->idx * pv_stride, 0, pv_stride);
  pv_count[c->idx] = 0;
}

/* A presence frame (either contract); returns whether it was one. */
static int on_presence(conn_t *c, const char *p, size_t n) {
  const char *t, *a, *b, *uid;
  size_t tl, ul;
  if (!json_str(p, n, "type", &t, &tl)) return 0;
  if (tl == 14 && !memcmp(t, "presence_state", 14)) {
    pv_reset(c);
    if (pv_span(p, n, "\"users\"", '{', '}', &a, &b)) pv_ids(c, a, b, 1);
  } else if (tl == 13 && !memcmp(t, "presence_diff", 13)) {
    if (pv_span(p, n, "\"leaves\"", '[', ']', &a, &b)) pv_ids(c, a, b, 0);
    if (pv_span(p, n, "\"joins\"", '{', '}', &a, &b)) pv_ids(c, a, b, 1);
  } else if (tl == 8 && !memcmp(t, "presence", 8)) {
    /* {"users":[{"userId":..,"role":..,"connections":..,"position":{..}|null},..]} */
    pv_reset(c);
    const char *q = p, *end = p + n;
    while (json_str(q, (size_t)(end - q), "userId", &uid, &ul)) {
      pv_apply(c, uid, ul, 1);
      q = uid + ul;
    }
  } else if (tl == 11 && !memcmp(t, "user_joined", 11)) {
    if (json_str(p, n, "userId", &uid, &ul)) pv_apply(c, uid, ul, 1);
    else pv_bad++;
  } else if (tl == 9 && !memcmp(t, "user_left", 9)) {
    if (json_str(p, n, "userId", &uid, &ul)) pv_apply(c, uid, ul, 0);
    else pv_bad++;
  } else if (tl == 17 && !memcmp(t, "user_role_changed", 17)) {
  } else {
    return 0;
  }
  pv_frames++;
  pv_bytes += n;
  pv_check(c);
  return 1;
}

static void on_message(conn_t *c, const char *p, size_t n) {
  if (c->state == ST_WAIT_CONNECTED) {
    const char *t, *org;
    size_t tl, ol;
    if (!json_str(p, n, "type", &t, &tl) || tl != 9 || memcmp(t, "connected", 9) != 0) {
      conn_kill(c, &e_not_connected, "first frame was not \"connected\"");
      return;
    }
    c->org = json_str(p, n, "orgId", &org, &ol) ? org_index(org, ol) : -1;
    if (c->org < 0) { conn_kill(c, &e_not_connected, "no orgId in \"connected\""); return; }
    if (batched) {
      const char *uid;
      size_t ul;
      c->user = json_str(p, n, "userId", &uid, &ul) ? user_lookup(uid, ul, 1) : -1;
      if (c->user < 0) { conn_kill(c, &e_not_connected, "no userId in \"connected\""); return; }
    }
    org_members[c->org]++;
    c->state = ST_READY;
    n_ready++;
    n_inflight--;
    uint64_t now = mono_us();
    h_add(&h_hs, now - c->t_start);
    t_storm_end = now;
    if (views) pv_check(c);
    return;
  }
  if (views && on_presence(c, p, n)) return;
  if (batched) {
    const char *t;
    size_t tl;
    if (json_str(p, n, "type", &t, &tl)) {
      if (tl == 9 && memcmp(t, "positions", 9) == 0) { on_positions(c, p, n); return; }
      if (tl == 15 && memcmp(t, "position_update", 15) == 0) {
        /* a batched connection must get none: the server ignored ?positions=batched */
        if (!pb_unbatched_frames++) diag(c, "position_update frame on a batched connection");
        return;
      }
    }
  }
  uint64_t ts;
  if (json_ts(p, n, &ts)) {
    rx_ts_total++;
    if (in_window) {
      uint64_t now = mono_us();
      rx_ts_win++;
      h_add(&h_lat, now > ts ? now - ts : 0);
      const char *uid;
      size_t ul;
      if (n_client_ports > 1 && json_str(p, n, "from", &uid, &ul)) add_split(c, uid, ul, now > ts ? now - ts : 0);
    }
    return;
  }
  const char *t;
  size_t tl;
  if (json_str(p, n, "type", &t, &tl) && tl == 5 && memcmp(t, "error", 5) == 0) {
    rx_error_frames++;
    if (diag_budget > 0) fprintf(stderr, "wsgen: client %d got: %.*s\n", c->idx, (int)(n > 300 ? 300 : n), p);
    diag_budget--;
  } else {
    rx_other++;
  }
}

/* A framing error: say what the bytes there were, so a server bug can be shown. */
static void bad_frame(conn_t *c, const char *b, size_t n, size_t off, const char *what) {
  char msg[400];
  int m = snprintf(msg, sizeof msg, "%s at byte %zu of %zu read:", what, off, n);
  size_t from = off > 24 ? off - 24 : 0;
  for (size_t i = from; i < n && i < off + 24 && m < (int)sizeof msg - 8; i++)
    m += snprintf(msg + m, sizeof msg - (size_t)m, i == off ? " [%02x" : i == off + 1 ? " %02x]" : " %02x",
                  (unsigned char)b[i]);
  conn_kill(c, &e_protocol, msg);
}

/* Parse as many whole frames as there are; returns bytes consumed. */
static size_t parse_frames(conn_t *c, char *b, size_t n) {
  size_t off = 0;
  while (n - off >= 2 && c->state != ST_DEAD) {
    unsigned char b0 = (unsigned char)b[off], b1 = (unsigned char)b[off + 1];
    int fin = b0 >> 7, op = b0 & 15;
    if (b1 & 0x80) { bad_frame(c, b, n, off, "masked frame from server"); return off; }
    if (b0 & 0x70) { bad_frame(c, b, n, off, "RSV bits set (no extension negotiated)"); return off; }
    uint64_t len = b1 & 127;
    size_t h = 2;
    if (len == 126) {
      if (n - off < 4) break;
      len = (uint64_t)(unsigned char)b[off + 2] << 8 | (unsigned char)b[off + 3];
      h = 4;
    } else if (len == 127) {
      if (n - off < 10) break;
      len = 0;
      for (int i = 0; i < 8; i++) len = len << 8 | (unsigned char)b[off + 2 + i];
      h = 10;
    }
    if (len > (16u << 20)) { conn_kill(c, &e_protocol, "frame over 16 MiB"); return off; }
    if (n - off < h + len) break;
    char *pl = b + off + h;
    switch (op) {
      case 1:
      case 2:
        if (fin) on_message(c, pl, (size_t)len);
        else { c->frag_op = (uint8_t)op; c->frag.len = 0; buf_put(&c->frag, pl, (size_t)len); }
        break;
      case 0:
        buf_put(&c->frag, pl, (size_t)len);
        if (fin) { on_message(c, c->frag.p, c->frag.len); c->frag.len = 0; }
        break;
      case 8: {
        char why[160];
        int code = len >= 2 ? (unsigned char)pl[0] << 8 | (unsigned char)pl[1] : 0;
        snprintf(why, sizeof why, "server closed (%d %.*s)", code, (int)(len > 2 ? (len - 2 > 100 ? 100 : len - 2) : 0),
                 pl + 2);
        conn_kill(c, &e_closed, why);
        return off;
      }
      case 9:
        send_frame(c, 10, pl, (size_t)len);
        break;
      case 10:
        break;
      default:
        conn_kill(c, &e_protocol, "unknown opcode");
        return off;
    }
    off += h + (size_t)len;
  }
  return off;
}

static const char *find_header(const char *hdr, const char *end, const char *name, size_t *vlen) {
  size_t nl = strlen(name);
  const char *l = memmem(hdr, (size_t)(end - hdr), "\r\n", 2);
  while (l && l < end) {
    l += 2;
    const char *e = memmem(l, (size_t)(end - l) + 2, "\r\n", 2);
    if (!e) break;
    if ((size_t)(e - l) > nl && strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
      const char *v = l + nl + 1;
      while (v < e && (*v == ' ' || *v == '\t')) v++;
      const char *ve = e;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      *vlen = (size_t)(ve - v);
      return v;
    }
    l = e;
  }
  return NULL;
}

static size_t on_handshake(conn_t *c, char *b, size_t n) {
  char *e = memmem(b, n, "\r\n\r\n", 4);
  if (!e) {
    if (n > 16384) conn_kill(c, &e_protocol, "handshake response too large");
    return 0;
  }
  if (n < 12 || memcmp(b, "HTTP/1.1 ", 9) != 0) { conn_kill(c, &e_protocol, "not an HTTP response"); return 0; }
  int status = atoi(b + 9);
  if (status != 101) {
    char why[96];
    const char *eol = memmem(b, n, "\r\n", 2);
    snprintf(why, sizeof why, "handshake refused: %.*s", (int)(eol - b > 80 ? 80 : eol - b), b);
    conn_kill(c, status == 401 ? &e_http401 : &e_http_status, why);
    return 0;
  }
  size_t vl;
  const char *v = find_header(b, e + 2, "Sec-WebSocket-Accept", &vl);
  if (!v || vl != 28 || memcmp(v, c->accept, 28) != 0) { conn_kill(c, &e_accept, "bad Sec-WebSocket-Accept"); return 0; }
  v = find_header(b, e + 2, "Sec-WebSocket-Protocol", &vl);
  const char *tok = tokens[c->idx];
  if (!v || vl != strlen(tok) || memcmp(v, tok, vl) != 0) {
    conn_kill(c, &e_subproto, "subprotocol not echoed");
    return 0;
  }
  if (find_header(b, e + 2, "Sec-WebSocket-Extensions", &vl)) {
    conn_kill(c, &e_subproto, "server negotiated an extension we did not offer");
    return 0;
  }
  c->state = ST_WAIT_CONNECTED;
  return (size_t)(e + 4 - b);
}

/* ------------------------------------------------------------------ publishers */
static const char *pick_org(void) {
  if (n_orgs <= 0) return NULL;
  if (n_orgs == 1) return org_name[0];
  return org_name[rng_next(&rng) % (uint64_t)n_orgs];
}

static int pub_send(conn_t *p, uint64_t stamp) {
  /* One notification, or a batch of opt_batch (each to its own org) as an array. */
  static char body[65536], req[66560];
  int bl = 0;
  if (opt_batch > 1) body[bl++] = '[';
  for (int i = 0; i < opt_batch; i++) {
    const char *org = pick_org();
    if (!org) return 0;
    bl += snprintf(body + bl, sizeof body - (size_t)bl,
                   "%s{\"orgId\":\"%s\",\"routing\":\"broadcast\",\"type\":\"room_updated\","
                   "\"payload\":{\"roomId\":\"ts-%llu\",\"name\":\"Main Hall\"}}",
                   i ? "," : "", org, (unsigned long long)stamp);
  }
  if (opt_batch > 1) body[bl++] = ']';
  body[bl] = 0;
  int n = snprintf(req, sizeof req,
                   "POST /internal/notify HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                   "CF-Access-Client-Id: %s\r\nCF-Access-Client-Secret: %s\r\nContent-Length: %d\r\n\r\n%s",
                   conn_port(p), opt_cf_id, opt_cf_secret, bl, body);
  uint64_t now = mono_us();
  p->busy = 1;
  p->req_stamp = stamp;
  p->req_sent = now;
  notify_sent += (uint64_t)opt_batch;
  if (in_window) h_add(&h_lag, now > stamp ? now - stamp : 0);
  send_bytes(p, req, (size_t)n);
  return 1;
}

/* The sum of every "delivered" count in an answer (one, or one per batch element);
   *published gets how many counts there were. */
static long parse_delivered(const char *b, size_t n, long *published) {
  const char *end = b + n, *q = b;
  long sum = 0;
  *published = 0;
  while ((q = memmem(q, (size_t)(end - q), "\"delivered\"", 11))) {
    q += 11;
    while (q < end && (*q == ' ' || *q == ':')) q++;
    long v = 0;
    int d = 0;
    while (q < end && isdigit((unsigned char)*q)) { v = v * 10 + (*q++ - '0'); d++; }
    if (d) { sum += v; (*published)++; }
  }
  return *published ? sum : -1;
}

/* One whole response at b? Returns its length (0: incomplete); fills status/body. */
static size_t http_response(const char *b, size_t n, int *status, const char **body, size_t *blen, int *close_after,
                            buf_t *chunks) {
  const char *e = memmem(b, n, "\r\n\r\n", 4);
  if (!e) return 0;
  size_t hl = (size_t)(e + 4 - b);
  *status = n > 12 ? atoi(b + 9) : 0;
  size_t vl;
  const char *v = find_header(b, e + 2, "Connection", &vl);
  *close_after = v && vl == 5 && strncasecmp(v, "close", 5) == 0;
  v = find_header(b, e + 2, "Transfer-Encoding", &vl);
  if (v && memmem(v, vl, "chunked", 7)) {
    size_t off = hl;
    chunks->len = 0;
    for (;;) {
      const char *eol = memmem(b + off, n - off, "\r\n", 2);
      if (!eol) return 0;
      unsigned long sz = strtoul(b + off, NULL, 16);
      size_t data = (size_t)(eol + 2 - b);
      if (sz == 0) {
        const char *fin = memmem(b + data, n - data, "\r\n", 2); /* no trailers expected */
        if (!fin) return 0;
        *body = chunks->p;
        *blen = chunks->len;
        return (size_t)(fin + 2 - b);
      }
      if (n - data < sz + 2) return 0;
      buf_put(chunks, b + data, sz);
      off = data + sz + 2;
    }
  }
  v = find_header(b, e + 2, "Content-Length", &vl);
  size_t cl = v ? strtoul(v, NULL, 10) : 0;
  if (n - hl < cl) return 0;
  *body = b + hl;
  *blen = cl;
  return hl + cl;
}

static size_t on_pub_data(conn_t *p, char *b, size_t n) {
  static buf_t chunks;
  size_t off = 0;
  while (off < n && p->state != ST_DEAD) {
    int status, close_after;
    const char *body = NULL;
    size_t blen = 0;
    size_t used = http_response(b + off, n - off, &status, &body, &blen, &close_after, &chunks);
    if (!used) {
      if (n - off > 65536) conn_kill(p, &e_pub, "notify response too large");
      break;
    }
    uint64_t now = mono_us();
    if (!p->busy) {
      conn_kill(p, &e_pub, "unexpected HTTP response");
      return off;
    }
    p->busy = 0;
    if (status == 200) {
      long published;
      long d = parse_delivered(body, blen, &published);
      notify_ok += (uint64_t)published;
      /* A batch element that was refused counts as an HTTP error. */
      if (published < opt_batch) {
        notify_http_err += (uint64_t)(opt_batch - published);
        if (diag_budget-- > 0)
          fprintf(stderr, "wsgen: batch elements refused: %.*s\n", (int)(blen > 200 ? 200 : blen), body);
      }
      if (d > 0) claimed_total += (uint64_t)d;
      if (in_window) {
        notify_ok_win += (uint64_t)published;
        if (d > 0) claimed_win += (uint64_t)d;
        h_add(&h_rtt, now - p->req_sent);
      }
    } else {
      notify_http_err++;
      if (diag_budget-- > 0)
        fprintf(stderr, "wsgen: notify answered %d: %.*s\n", status, (int)(blen > 200 ? 200 : blen), body ? body : "");
    }
    off += used;
    if (close_after) {
      conn_kill(p, NULL, NULL);
      return off;
    }
  }
  return off;
}

/* ------------------------------------------------------------------ event dispatch */
static char rbuf[1 << 18];

static void on_event(conn_t *c, uint32_t ev) {
  if (c->state == ST_DEAD || c->state == ST_IDLE) return;
  if (c->state == ST_CONNECTING) {
    if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err || (ev & (EPOLLERR | EPOLLHUP))) {
      errno = err;
      conn_kill(c, c->is_pub ? &e_pub : &e_connect, err ? strerror(err) : "connect failed");
      return;
    }
    if (c->is_pub) {
      c->state = ST_PUB;
      ep_set(c, 0);
    } else {
      ep_set(c, 0);
      send_handshake(c);
    }
    return;
  }
  if (ev & EPOLLOUT) {
    flush_out(c);
    if (c->state == ST_DEAD) return;
  }
  if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
  char *base;
  size_t have;
  ssize_t r;
  if (c->in.len) { /* a partial frame is waiting: read behind it */
    buf_reserve(&c->in, c->in.len + 65536);
    r = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
    if (r > 0) c->in.len += (size_t)r;
    base = c->in.p;
    have = c->in.len;
  } else {
    r = read(c->fd, rbuf, sizeof rbuf);
    base = rbuf;
    have = r > 0 ? (size_t)r : 0;
  }
  if (r == 0) {
    if (c->is_pub) {
      conn_kill(c, NULL, NULL); /* keep-alive closed by the server: reopened by the loop */
    } else {
      conn_kill(c, &e_eof, "EOF from server");
    }
    return;
  }
  if (r < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    conn_kill(c, c->is_pub ? &e_pub : &e_io, "read failed");
    return;
  }
  if (in_window && c->state == ST_READY) { rx_reads_win++; rx_bytes_win += (uint64_t)r; }
  size_t used;
  if (c->is_pub) {
    used = on_pub_data(c, base, have);
  } else {
    used = 0;
    if (c->state == ST_HANDSHAKE) used = on_handshake(c, base, have);
    if (c->state == ST_WAIT_CONNECTED || c->state == ST_READY) used += parse_frames(c, base + used, have - used);
  }
  if (c->state == ST_DEAD) return;
  if (base == c->in.p) {
    buf_drop(&c->in, used);
  } else if (used < have) {
    buf_put(&c->in, base + used, have - used);
  }
}

static int wait_events(int64_t timeout_us) {
  static struct epoll_event evs[4096];
  if (timeout_us < 0) timeout_us = 0;
  struct timespec ts = {.tv_sec = timeout_us / 1000000, .tv_nsec = (timeout_us % 1000000) * 1000};
  int k = epoll_pwait2(ep, evs, 4096, &ts, NULL);
  if (k < 0 && errno == ENOSYS) k = epoll_wait(ep, evs, 4096, (int)((timeout_us + 999) / 1000));
  if (k < 0) {
    if (errno == EINTR) return 0;
    fatal("epoll_wait");
  }
  for (int i = 0; i < k; i++) on_event(evs[i].data.ptr, evs[i].events);
  return k;
}

/* ------------------------------------------------------------------ /proc sampling */
#define MAX_CPUS 64
typedef struct {
  uint64_t t_us;
  double srv_cpu_s, srv_exec_s, srv_delay_s, gen_cpu_s, gen_user_s, gen_delay_s;
  int srv_procs;
  unsigned long long busy[MAX_CPUS], total[MAX_CPUS], all_busy, all_steal;
  int ncpu;
} sample_t;

static double ticks_per_s;

/* utime+stime of one process (all its threads), from /proc/PID/stat; pgrp out. */
static int read_stat(const char *pid, int *pgrp, double *cpu_s) {
  char path[300], buf[1024];
  snprintf(path, sizeof path, "/proc/%s/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  /* after ")": state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime */
  char st;
  int ppid, pg;
  unsigned long long skip, ut, stt;
  if (sscanf(p + 2, "%c %d %d %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &st, &ppid, &pg, &skip, &skip, &skip,
             &skip, &skip, &skip, &skip, &skip, &ut, &stt) != 13)
    return 0;
  *pgrp = pg;
  *cpu_s = (double)(ut + stt) / ticks_per_s;
  return 1;
}

/* Sum of exec time and run_delay (runnable but waiting for a CPU) over a process's threads. */
static void read_schedstat(const char *pid, double *exec_s, double *delay_s) {
  char path[300];
  snprintf(path, sizeof path, "/proc/%s/task", pid);
  DIR *d = opendir(path);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/task/%s/schedstat", pid, e->d_name);
    FILE *f = fopen(path, "re");
    if (!f) continue;
    unsigned long long ex, dl;
    if (fscanf(f, "%llu %llu", &ex, &dl) == 2) { *exec_s += (double)ex / 1e9; *delay_s += (double)dl / 1e9; }
    fclose(f);
  }
  closedir(d);
}

static void take_sample(sample_t *s) {
  memset(s, 0, sizeof *s);
  s->t_us = mono_us();
  if (opt_pgid > 0) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      int pg;
      double cpu;
      if (read_stat(e->d_name, &pg, &cpu) && pg == opt_pgid) {
        s->srv_cpu_s += cpu;
        s->srv_procs++;
        read_schedstat(e->d_name, &s->srv_exec_s, &s->srv_delay_s);
      }
    }
    if (d) closedir(d);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  s->gen_user_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
  s->gen_cpu_s = s->gen_user_s + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  double ex = 0;
  read_schedstat("self", &ex, &s->gen_delay_s);
  FILE *f = fopen("/proc/stat", "re");
  char line[512];
  while (f && fgets(line, sizeof line, f)) {
    int id;
    unsigned long long v[8] = {0};
    int got;
    if (!strncmp(line, "cpu ", 4)) {
      got = sscanf(line + 4, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]);
      if (got >= 8) {
        s->all_busy = v[0] + v[1] + v[2] + v[5] + v[6];
        s->all_steal = v[7];
      }
      continue;
    }
    if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &id, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
               &v[6], &v[7]) >= 8 &&
        id >= 0 && id < MAX_CPUS) {
      unsigned long long tot = 0;
      for (int i = 0; i < 8; i++) tot += v[i];
      s->busy[id] = tot - v[3] - v[4] - v[7]; /* steal is the hypervisor's, not ours */
      s->total[id] = tot;
      if (id + 1 > s->ncpu) s->ncpu = id + 1;
    }
  }
  if (f) fclose(f);
}

static void cpu_json(const sample_t *a, const sample_t *b) {
  double w = (double)(b->t_us - a->t_us) / 1e6;
  if (w <= 0) w = 1e-6;
  double srv = b->srv_cpu_s - a->srv_cpu_s, gen = b->gen_cpu_s - a->gen_cpu_s;
  double all = (double)(b->all_busy - a->all_busy) / ticks_per_s;
  double other = all - srv - gen;
  printf("\"cpu\":{\"server_pct\":%.1f,\"server_exec_pct\":%.1f,\"server_procs\":%d,\"gen_pct\":%.1f,\"gen_user_pct\":%.1f,"
         "\"server_wait_pct\":%.2f,\"gen_wait_pct\":%.2f,\"other_pct\":%.1f,\"steal_pct\":%.1f,\"busy_pct\":[",
         opt_pgid > 0 ? 100 * srv / w : -1.0, opt_pgid > 0 ? 100 * (b->srv_exec_s - a->srv_exec_s) / w : -1.0,
         b->srv_procs, 100 * gen / w, 100 * (b->gen_user_s - a->gen_user_s) / w,
         opt_pgid > 0 ? 100 * (b->srv_delay_s - a->srv_delay_s) / w : -1.0, 100 * (b->gen_delay_s - a->gen_delay_s) / w,
         other > 0 ? 100 * other / w : 0.0, 100 * (double)(b->all_steal - a->all_steal) / ticks_per_s / w);
  for (int i = 0; i < b->ncpu; i++) {
    unsigned long long dt = b->total[i] - a->total[i];
    printf("%s%.1f", i ? "," : "", dt ? 100.0 * (double)(b->busy[i] - a->busy[i]) / (double)dt : -1.0);
  }
  printf("]}");
}

/* ------------------------------------------------------------------ phases */
static void on_usr1(int sig) {
  (void)sig;
  got_usr1 = 1;
}

static void load_tokens(void) {
  FILE *f = fopen(opt_tokens, "re");
  if (!f) fatal(opt_tokens);
  char *line = NULL;
  size_t cap = 0;
  ssize_t l;
  int tcap = 0;
  while ((l = getline(&line, &cap, f)) > 0) {
    while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r' || line[l - 1] == ' ')) line[--l] = 0;
    if (!l) continue;
    if (ntokens == tcap) {
      tcap = tcap ? tcap * 2 : 1024;
      tokens = realloc(tokens, (size_t)tcap * sizeof *tokens);
      if (!tokens) fatal("out of memory");
    }
    tokens[ntokens++] = strdup(line);
  }
  free(line);
  fclose(f);
}

/* Open the N clients, at most opt_inflight handshakes at a time. */
static void connect_clients(void) {
  uint64_t deadline = mono_us() + (uint64_t)(opt_ready_timeout * 1e6);
  int next = 0;
  t_storm0 = mono_us();
  t_storm_end = t_storm0;
  while (n_ready + n_failed < opt_n && mono_us() < deadline) {
    while (next < opt_n && n_inflight < opt_inflight) conn_start(&clients[next++]);
    wait_events(2000);
  }
  if (n_ready < opt_n) {
    fprintf(stderr, "wsgen: %d of %d clients ready (failed %d, in flight %d)\n", n_ready, opt_n, n_failed, n_inflight);
    for (int i = 0; i < opt_n; i++)
      if (clients[i].state != ST_READY && clients[i].state != ST_DEAD && clients[i].state != ST_IDLE)
        conn_kill(&clients[i], &e_not_connected, n_failed < 5 ? "not ready in time" : NULL);
  }
}

static int connect_publishers(void) {
  pubs = calloc((size_t)(opt_publishers > 0 ? opt_publishers : 1), sizeof *pubs);
  for (int i = 0; i < opt_publishers; i++) {
    pubs[i].idx = i;
    pubs[i].is_pub = 1;
    pubs[i].fd = -1;
    conn_start(&pubs[i]);
  }
  uint64_t deadline = mono_us() + 5000000;
  for (;;) {
    int up = 0;
    for (int i = 0; i < opt_publishers; i++) up += pubs[i].state == ST_PUB;
    if (up == opt_publishers) return 1;
    if (mono_us() > deadline) return 0;
    wait_events(2000);
  }
}

static void reopen_publishers(void) {
  for (int i = 0; i < opt_publishers; i++)
    if (pubs[i].state == ST_DEAD && pub_reconnects < 10000) {
      pub_reconnects++;
      conn_start(&pubs[i]);
    }
}

static conn_t *free_publisher(void) {
  static int rr;
  for (int k = 0; k < opt_publishers; k++) {
    conn_t *p = &pubs[(rr + k) % opt_publishers];
    if (p->state == ST_PUB && !p->busy) {
      rr = (rr + k + 1) % opt_publishers;
      return p;
    }
  }
  return NULL;
}

static void s2_send(conn_t *c, uint64_t stamp, uint64_t k) {
  char msg[200];
  int n = snprintf(msg, sizeof msg,
                   "{\"type\":\"position_update\",\"payload\":{\"x\":%.2f,\"y\":%.2f,\"roomId\":\"ts-%llu\"}}",
                   (double)(k % 1000) * 0.5, (double)(k % 617) * 0.25, (unsigned long long)stamp);
  send_frame(c, 1, msg, (size_t)n);
  s2_sent++;
  s2_expected_total += (uint64_t)(org_members[c->org] - 1);
}

/* "P1,P2,...": at most MAX_PORTS ports, each in 1..65535; 0 for a bad list. */
static int parse_ports(const char *v, int *out) {
  int k = 0;
  while (*v) {
    char *end;
    long port = strtol(v, &end, 10);
    if (end == v || port <= 0 || port > 65535 || k >= MAX_PORTS || (*end && *end != ',')) return 0;
    out[k++] = (int)port;
    v = *end ? end + 1 : end;
  }
  return k;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (!strcmp(a, "--scenario")) opt_scenario = v;
    else if (!strcmp(a, "--port")) opt_port = atoi(v);
    else if (!strcmp(a, "--tokens")) opt_tokens = v;
    else if (!strcmp(a, "-n")) opt_n = atoi(v);
    else if (!strcmp(a, "--publishers")) opt_publishers = atoi(v);
    else if (!strcmp(a, "--batch")) opt_batch = atoi(v);
    else if (!strcmp(a, "--rate")) opt_rate = atof(v);
    else if (!strcmp(a, "--hz")) opt_hz = atof(v);
    else if (!strcmp(a, "--duration")) opt_duration = atof(v);
    else if (!strcmp(a, "--warmup")) opt_warmup = atof(v);
    else if (!strcmp(a, "--drain")) opt_drain = atof(v);
    else if (!strcmp(a, "--settle")) opt_settle = atof(v);
    else if (!strcmp(a, "--hold")) opt_hold = atof(v);
    else if (!strcmp(a, "--inflight")) opt_inflight = atoi(v);
    else if (!strcmp(a, "--ready-timeout")) opt_ready_timeout = atof(v);
    else if (!strcmp(a, "--server-pgid")) opt_pgid = atoi(v);
    else if (!strcmp(a, "--cf-id")) opt_cf_id = v;
    else if (!strcmp(a, "--cf-secret")) opt_cf_secret = v;
    else if (!strcmp(a, "--seed")) opt_seed = strtoull(v, NULL, 0);
    else if (!strcmp(a, "--ports")) { if (!(n_client_ports = parse_ports(v, client_ports))) usage(); }
    else if (!strcmp(a, "--notify-ports")) { if (!(n_notify_ports = parse_ports(v, notify_ports))) usage(); }
    else if (!strcmp(a, "--presence")) {
      if (!strcmp(v, "diff")) opt_presence_diff = 1;
      else if (strcmp(v, "plain")) usage();
    } else usage();
  }
  const char *sc = opt_scenario;
  int is_s1 = !strcmp(sc, "s1"), is_s2 = !strcmp(sc, "s2"), is_s3 = !strcmp(sc, "s3"), is_s4 = !strcmp(sc, "s4"),
      is_s5 = !strcmp(sc, "s5");
  if (!strcmp(sc, "s2b")) is_s2 = batched = 1; /* s2b is s2 on batched connections */
  if (!strcmp(sc, "s6")) is_s5 = views = 1;     /* s6 is s5, then every view complete */
  if (opt_presence_diff && !views) usage();
  if (opt_port <= 0 && n_client_ports > 0) opt_port = client_ports[0];
  if (!n_client_ports && opt_port > 0) client_ports[n_client_ports++] = opt_port;
  if (!n_notify_ports && opt_port > 0) notify_ports[n_notify_ports++] = opt_port;
  if (!(is_s1 || is_s2 || is_s3 || is_s4 || is_s5) || opt_port <= 0 || opt_port > 65535 || !opt_tokens || opt_n < 1 ||
      opt_inflight < 1 || opt_publishers < 0 || opt_batch < 1 || opt_batch > 100 || opt_duration <= 0 || opt_warmup < 0 || opt_hz <= 0)
    usage();
  /* bounds: nothing may run unbounded */
  if (opt_duration > 600 || opt_warmup > 120 || opt_drain > 120 || opt_hold > 600 || opt_ready_timeout > 600 ||
      opt_settle > 120) {
    fprintf(stderr, "wsgen: times are capped (duration 600 s, others 120-600 s)\n");
    return 64;
  }
  rng ^= opt_seed;
  if (!rng) rng = 1;
  ticks_per_s = (double)sysconf(_SC_CLK_TCK);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_usr1};
  sigaction(SIGUSR1, &sa, NULL);

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)opt_n + (rlim_t)opt_publishers + 64 > rl.rlim_cur) {
      fprintf(stderr, "wsgen: -n %d needs more open files than the limit (%llu)\n", opt_n,
              (unsigned long long)rl.rlim_cur);
      return 64;
    }
  }
  load_tokens();
  if (ntokens < opt_n) {
    fprintf(stderr, "wsgen: %s has %d tokens; one per client is needed (%d)\n", opt_tokens, ntokens, opt_n);
    return 64;
  }
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) fatal("epoll_create1");
  clients = calloc((size_t)opt_n, sizeof *clients);
  if (!clients) fatal("out of memory");
  for (int i = 0; i < opt_n; i++) { clients[i].idx = i; clients[i].fd = -1; clients[i].org = -1; clients[i].user = -1; }
  if (batched) {
    user_cap = opt_n;
    for (user_hash_size = 64; user_hash_size < (size_t)opt_n * 2; user_hash_size *= 2) {
    }
    user_name = calloc((size_t)opt_n, sizeof *user_name);
    user_hash = calloc(user_hash_size, sizeof *user_hash);
    pb_stride = ((size_t)opt_n + 7) / 8;
    pb_heard = calloc((size_t)opt_n, pb_stride);
    if (!user_name || !user_hash || !pb_heard) fatal("out of memory");
  }

  if (views) {
    pv_stride = ((size_t)opt_n + 7) / 8;
    pv_bits = calloc((size_t)opt_n, pv_stride);
    pv_count = calloc((size_t)opt_n, sizeof *pv_count);
    pv_done = calloc((size_t)opt_n, 1);
    if (!pv_bits || !pv_count || !pv_done) fatal("out of memory");
    /* the diff contract lists the client's own user, the plain one does not */
    pv_expected = opt_presence_diff ? opt_n : opt_n - 1;
  }

  /* ---- connect (this is all of S5) ---- */
  sample_t c0, c1, w0, w1;
  take_sample(&c0);
  connect_clients();
  take_sample(&c1);
  double storm_s = (double)(t_storm_end - t_storm0) / 1e6;
  int ready_after_connect = n_ready;
  fprintf(stderr, "wsgen: %d/%d clients ready in %.2f s, %d org(s)\n", n_ready, opt_n, storm_s, n_orgs);
  if (views) {
    /* the rest of the join storm: until every client's view is the whole org */
    uint64_t deadline = t_storm0 + (uint64_t)(opt_ready_timeout * 1e6), t;
    while (pv_complete < n_ready && (t = mono_us()) < deadline)
      wait_events((int64_t)(deadline - t < 20000 ? deadline - t : 20000));
    take_sample(&c1);
    fprintf(stderr, "wsgen: %d/%d views complete in %.2f s\n", pv_complete, n_ready,
            t_view_end > t_storm0 ? (double)(t_view_end - t_storm0) / 1e6 : 0.0);
  }
  if (is_s1 && n_orgs > 1) fprintf(stderr, "wsgen: warning: s1 expects one org, tokens span %d\n", n_orgs);

  double window_s = 0, drain_s = 0;
  int pubs_up = 1;
  memset(&w0, 0, sizeof w0);
  memset(&w1, 0, sizeof w1);
  if (is_s3) {
    uint64_t t = mono_us(), te = t + (uint64_t)(opt_settle * 1e6);
    while ((t = mono_us()) < te) wait_events((int64_t)(te - t));
    take_sample(&w0);
    fprintf(stderr, "wsgen: READY %d\n", n_ready);
    fflush(stderr);
    te = mono_us() + (uint64_t)(opt_hold * 1e6);
    while (!got_usr1 && (t = mono_us()) < te) wait_events((int64_t)(te - t < 100000 ? te - t : 100000));
    take_sample(&w1);
    window_s = (double)(w1.t_us - w0.t_us) / 1e6;
  } else if (is_s1 || is_s2 || is_s4) {
    if ((is_s1 || is_s4) && opt_publishers > 0) pubs_up = connect_publishers();
    double notify_interval_us = 0, s2_interval_us = 0;
    if (opt_rate > 0 && n_orgs > 0 && n_ready > 0) {
      double per_notify = (double)n_ready / (double)n_orgs; /* mean deliveries per notify */
      notify_interval_us = 1e6 / (opt_rate / per_notify) * opt_batch; /* one POST per batch */
    }
    if (is_s2) s2_interval_us = 1e6 / ((double)opt_n * opt_hz);
    uint64_t t0 = mono_us(), tw0 = t0 + (uint64_t)(opt_warmup * 1e6), tend = tw0 + (uint64_t)(opt_duration * 1e6);
    uint64_t notify_k = 0, s2_k = 0;
    uint64_t s2_sent_at_w0 = 0;
    int started = 0;
    for (;;) {
      uint64_t now = mono_us();
      if (!started && now >= tw0) {
        fprintf(stderr, "wsgen: WINDOW start\n");
        fflush(stderr);
        take_sample(&w0);
        started = in_window = 1;
        s2_sent_at_w0 = s2_sent;
      }
      if (now >= tend) break;
      uint64_t wake = started ? tend : tw0;
      if ((is_s1 || is_s4) && opt_publishers > 0) {
        reopen_publishers();
        if (opt_rate <= 0) {
          conn_t *p;
          while ((p = free_publisher()) && pub_send(p, mono_us())) {
          }
        } else if (notify_interval_us > 0) {
          for (;;) {
            uint64_t due = t0 + (uint64_t)((double)notify_k * notify_interval_us);
            if (due > now) { if (due < wake) wake = due; break; }
            conn_t *p = free_publisher();
            if (!p) break; /* all busy: stays due; its latency counts from 'due' */
            if (!pub_send(p, due)) break;
            notify_k++;
          }
        }
      }
      if (is_s2) {
        for (;;) {
          uint64_t due = t0 + (uint64_t)((double)s2_k * s2_interval_us);
          if (due > now) { if (due < wake) wake = due; break; }
          conn_t *c = &clients[s2_k % (uint64_t)opt_n];
          if (c->state == ST_READY && c->out.len < (1u << 20)) s2_send(c, due, s2_k);
          else s2_skipped++;
          s2_k++;
        }
      }
      now = mono_us();
      wait_events(wake > now ? (int64_t)(wake - now) : 0);
    }
    take_sample(&w1);
    in_window = 0;
    fprintf(stderr, "wsgen: WINDOW end\n");
    fflush(stderr);
    window_s = (double)(w1.t_us - w0.t_us) / 1e6;
    s2_sent_win = s2_sent - s2_sent_at_w0;
    /* drain: let what was sent arrive, so totals can be compared exactly */
    uint64_t td = mono_us(), tde = td + (uint64_t)(opt_drain * 1e6), t;
    while ((t = mono_us()) < tde) {
      int done;
      if (is_s2) {
        done = rx_ts_total >= s2_expected_total;
        /* s2b: updates superseded within a tick never arrive; sending has stopped, so
         * the server is done once no "positions" frame came for a few ticks */
        if (batched && t - (pb_last_frame_us > td ? pb_last_frame_us : td) > 300000) done = 1;
      } else {
        int busy = 0;
        for (int i = 0; i < opt_publishers; i++) busy += pubs[i].state == ST_PUB && pubs[i].busy;
        done = !busy && rx_ts_total >= claimed_total;
      }
      if (done) break;
      wait_events((int64_t)(tde - t < 20000 ? tde - t : 20000));
    }
    drain_s = (double)(mono_us() - td) / 1e6;
  }

  /* ---------------------------------------------------------------- report */
  uint64_t errors = e_connect + e_http_status + e_http401 + e_accept + e_subproto + e_protocol + e_closed + e_eof + e_io +
                    e_not_connected + e_pub + notify_http_err + rx_error_frames + pb_unbatched_frames +
                    (pubs_up ? 0 : 1) + (uint64_t)(views ? opt_n - pv_complete : 0) + pv_unknown + pv_bad +
                    pv_doubled + pv_missing_leave;
  printf("{\"scenario\":\"%s\",\"n\":%d,\"ready\":%d,\"ready_at_end\":%d,\"orgs\":%d,", sc, opt_n, ready_after_connect,
         n_ready, n_orgs);
  printf("\"connect\":{\"seconds\":%.3f,\"per_s\":%.1f,\"inflight\":%d,", storm_s,
         storm_s > 0 ? (double)ready_after_connect / storm_s : 0.0, opt_inflight);
  h_json(&h_hs, "handshake_ms");
  printf(",");
  cpu_json(&c0, &c1);
  printf("}");
  if (views) {
    uint64_t end = t_view_end > t_storm_end ? t_view_end : t_storm_end;
    printf(",\"view\":{\"presence\":\"%s\",\"seconds\":%.3f,\"complete\":%d,\"expected_users\":%d,"
           "\"frames\":%llu,\"bytes\":%llu,\"unknown_users\":%llu,\"bad_frames\":%llu,\"doubled_joins\":%llu,"
           "\"leaves_of_unlisted\":%llu}",
           opt_presence_diff ? "diff" : "plain", (double)(end - t_storm0) / 1e6, pv_complete, pv_expected,
           (unsigned long long)pv_frames, (unsigned long long)pv_bytes, (unsigned long long)pv_unknown,
           (unsigned long long)pv_bad, (unsigned long long)pv_doubled, (unsigned long long)pv_missing_leave);
  }
  if (!is_s5) {
    printf(",\"window_s\":%.3f", window_s);
    if (window_s > 0) {
      printf(",");
      cpu_json(&w0, &w1);
    }
  }
  if (is_s1 || is_s2 || is_s4) {
    printf(",\"deliveries\":%llu,\"deliveries_per_s\":%.1f,", (unsigned long long)rx_ts_win,
           window_s > 0 ? (double)rx_ts_win / window_s : 0.0);
    h_json(&h_lat, "latency_ms");
    if (n_client_ports > 1 && is_s2) {
      printf(",");
      h_json(&h_local, "latency_local_ms");
      printf(",");
      h_json(&h_cross, "latency_cross_ms");
    }
    printf(",\"ports\":%d,\"notify_ports\":%d", n_client_ports, n_notify_ports);
    printf(",\"frames_per_read\":%.2f,\"bytes_per_read\":%.0f,\"drain_s\":%.3f",
           rx_reads_win ? (double)(batched ? pb_frames_win : rx_ts_win) / (double)rx_reads_win : 0.0,
           rx_reads_win ? (double)rx_bytes_win / (double)rx_reads_win : 0.0, drain_s);
  }
  if (is_s1 || is_s4) {
    printf(",\"batch\":%d", opt_batch);
    printf(",\"publishers\":%d,\"rate_target\":%.1f,\"notify\":{\"sent\":%llu,\"ok\":%llu,\"replies_per_s\":%.1f,"
           "\"delivered_claimed_per_s\":%.1f,\"http_errors\":%llu,\"reconnects\":%llu,\"lost_replies\":%llu,",
           opt_publishers, opt_rate, (unsigned long long)notify_sent, (unsigned long long)notify_ok,
           window_s > 0 ? (double)notify_ok_win / window_s : 0.0, window_s > 0 ? (double)claimed_win / window_s : 0.0,
           (unsigned long long)notify_http_err, (unsigned long long)pub_reconnects,
           (unsigned long long)pub_lost_replies);
    h_json(&h_rtt, "rtt_ms");
    printf(",");
    h_json(&h_lag, "send_lag_ms");
    printf("},\"totals\":{\"delivered_claimed\":%llu,\"received\":%llu,\"missing\":%lld}",
           (unsigned long long)claimed_total, (unsigned long long)rx_ts_total,
           (long long)claimed_total - (long long)rx_ts_total);
  }
  if (is_s2) {
    double exp_ps = (double)ready_after_connect * (double)(ready_after_connect - 1) * opt_hz;
    printf(",\"s2\":{\"hz\":%.2f,\"sent_per_s\":%.1f,\"expected_per_s\":%.1f,\"achieved\":%.4f,\"skipped_sends\":%llu,"
           "\"expected_total\":%llu,\"received_total\":%llu,\"backlog_after_drain\":%lld}",
           opt_hz, window_s > 0 ? (double)s2_sent_win / window_s : 0.0, exp_ps,
           exp_ps > 0 && window_s > 0 ? (double)rx_ts_win / window_s / exp_ps : 0.0, (unsigned long long)s2_skipped,
           (unsigned long long)s2_expected_total, (unsigned long long)rx_ts_total,
           (long long)s2_expected_total - (long long)rx_ts_total);
  }
  if (batched) {
    /* freshness: per receiver still connected, the distinct other users it heard in the window */
    int heard_min = -1, short_of = 0, receivers = 0;
    double heard_sum = 0;
    int heard_expected = ready_after_connect - 1;
    for (int i = 0; i < opt_n; i++) {
      const conn_t *c = &clients[i];
      if (c->state != ST_READY || c->user < 0) continue;
      const uint8_t *row = pb_heard + (size_t)c->user * pb_stride;
      int k = 0;
      for (size_t b = 0; b < pb_stride; b++) k += __builtin_popcount(row[b]);
      receivers++;
      heard_sum += k;
      if (heard_min < 0 || k < heard_min) heard_min = k;
      if (k < heard_expected) short_of++;
    }
    printf(",\"batched\":{\"frames\":%llu,\"frames_per_s\":%.1f,\"frames_per_client_per_s\":%.2f,"
           "\"entries_per_frame\":%.1f,\"entries_total\":%llu,\"own_entries\":%llu,\"own_entries_total\":%llu,",
           (unsigned long long)pb_frames_win, window_s > 0 ? (double)pb_frames_win / window_s : 0.0,
           window_s > 0 && receivers > 0 ? (double)pb_frames_win / window_s / receivers : 0.0,
           pb_frames_win ? (double)(rx_ts_win + pb_own_win) / (double)pb_frames_win : 0.0,
           (unsigned long long)(rx_ts_total + pb_own_total), (unsigned long long)pb_own_win,
           (unsigned long long)pb_own_total);
    h_json(&h_own, "own_latency_ms");
    /* every sender gets its own update back unless a later one superseded it in the
     * same tick, so the sends missing from one's own entries are the superseded ones
     * (exact when every client stayed connected) */
    long long superseded = (long long)s2_sent - (long long)pb_own_total;
    long long others = ready_after_connect - 1;
    printf(",\"superseded_sends\":%lld,\"missing_after_drain\":%lld", superseded,
           (long long)s2_expected_total - (long long)rx_ts_total - superseded * others);
    printf(",\"heard_min\":%d,\"heard_mean\":%.1f,\"heard_expected\":%d,\"receivers\":%d,"
           "\"receivers_short\":%d,\"bad_entries\":%llu,\"unknown_users\":%llu,\"unbatched_frames\":%llu}",
           heard_min, receivers ? heard_sum / receivers : 0.0, heard_expected, receivers, short_of,
           (unsigned long long)pb_bad_entries, (unsigned long long)pb_unknown_user,
           (unsigned long long)pb_unbatched_frames);
  }
  printf(",\"other_frames\":%llu,\"errors\":{\"connect\":%llu,\"http_401\":%llu,\"http_other\":%llu,"
         "\"bad_accept\":%llu,\"bad_subprotocol\":%llu,\"protocol\":%llu,\"closed_by_server\":%llu,\"eof\":%llu,"
         "\"io\":%llu,\"not_connected\":%llu,\"publisher\":%llu,\"notify_http\":%llu,\"error_frames\":%llu,"
         "\"unbatched_frames\":%llu,\"total\":%llu}}\n",
         (unsigned long long)rx_other, (unsigned long long)e_connect, (unsigned long long)e_http401,
         (unsigned long long)e_http_status, (unsigned long long)e_accept, (unsigned long long)e_subproto,
         (unsigned long long)e_protocol, (unsigned long long)e_closed, (unsigned long long)e_eof,
         (unsigned long long)e_io, (unsigned long long)e_not_connected, (unsigned long long)e_pub,
         (unsigned long long)notify_http_err, (unsigned long long)rx_error_frames,
         (unsigned long long)pb_unbatched_frames, (unsigned long long)errors);
  fflush(stdout);
  return 0;
}
