/* wsblast: a stand-in "server" that only pushes pre-built broadcast frames, to
 * measure how many frames per second wsgen itself can receive (its ceiling).
 *
 *   wsblast --port P -n N --seconds S [--batch K] [--accept-timeout S]
 *
 * Listens on 127.0.0.1 only. Accepts N WebSocket clients (answers the handshake
 * with a correct Sec-WebSocket-Accept, echoes the offered subprotocol, sends a
 * "connected" frame; the token is not verified), then for S seconds writes, round
 * after round, K copies of one room_updated frame (stamped "ts-<us>" once per round)
 * to every client in one write() each. A client whose socket is full is skipped
 * until it drains. Prints its own counts on stderr and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
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
#include <sys/socket.h>
#include <unistd.h>

#include "wscommon.h"

typedef struct {
  int fd;
  char req[16384];
  size_t got;
  char rem[65536];
  size_t rem_off, rem_len;
} client_t;

static const char *header_value(const char *req, const char *name, size_t *len) {
  size_t nl = strlen(name);
  for (const char *l = strstr(req, "\r\n"); l; l = strstr(l, "\r\n")) {
    l += 2;
    if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
      const char *v = l + nl + 1;
      while (*v == ' ') v++;
      const char *e = strstr(v, "\r\n");
      if (!e) return NULL;
      *len = (size_t)(e - v);
      return v;
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  int port = 0, n = 0, batch = 1;
  double seconds = 0, accept_timeout = 60;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "-n")) n = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--accept-timeout")) accept_timeout = atof(argv[i + 1]);
  }
  if (port <= 0 || n <= 0 || seconds <= 0 || seconds > 600 || batch < 1 || batch > 64) {
    fprintf(stderr, "usage: wsblast --port P -n N --seconds S [--batch K] [--accept-timeout S]\n");
    return 64;
  }
  signal(SIGPIPE, SIG_IGN);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
    perror("wsblast: listen");
    return 70;
  }
  client_t *cl = calloc((size_t)n, sizeof *cl);
  if (!cl) return 70;
  int accepted = 0, opened = 0;
  uint64_t deadline = mono_us() + (uint64_t)(accept_timeout * 1e6);
  /* handshake phase: a plain polling loop, bounded by the deadline */
  while (opened < n && mono_us() < deadline) {
    int progress = 0;
    while (accepted < n) {
      int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) break;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      cl[accepted++].fd = fd;
      progress = 1;
    }
    for (int i = 0; i < accepted; i++) {
      client_t *c = &cl[i];
      if (c->fd < 0 || c->got == (size_t)-1) continue;
      ssize_t r = read(c->fd, c->req + c->got, sizeof c->req - 1 - c->got);
      if (r == 0 || (r < 0 && errno != EAGAIN)) { /* a port probe, not a client: free the slot */
        close(c->fd);
        *c = cl[--accepted];
        memset(&cl[accepted], 0, sizeof cl[accepted]);
        i--;
        continue;
      }
      if (r < 0) continue;
      progress = 1;
      c->got += (size_t)r;
      c->req[c->got] = 0;
      if (!strstr(c->req, "\r\n\r\n")) continue;
      size_t kl = 0, pl = 0;
      const char *key = header_value(c->req, "Sec-WebSocket-Key", &kl);
      const char *proto = header_value(c->req, "Sec-WebSocket-Protocol", &pl);
      char keyz[64] = {0}, acc[29], resp[16384 + 512];
      if (!key || kl >= sizeof keyz) { close(c->fd); c->fd = -1; continue; }
      memcpy(keyz, key, kl);
      ws_accept(keyz, acc);
      int m = snprintf(resp, sizeof resp,
                       "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: %s\r\n%s%.*s%s\r\n",
                       acc, proto ? "Sec-WebSocket-Protocol: " : "", (int)pl, proto ? proto : "", proto ? "\r\n" : "");
      char body[200];
      int bl = snprintf(body, sizeof body,
                        "{\"type\":\"connected\",\"payload\":{\"connectionId\":\"b%d\",\"userId\":\"u%d\","
                        "\"orgId\":\"blast-org\",\"role\":\"member\"}}",
                        i, i);
      resp[m++] = (char)0x81;
      resp[m++] = (char)bl;
      memcpy(resp + m, body, (size_t)bl);
      m += bl;
      if (write(c->fd, resp, (size_t)m) != m) { close(c->fd); c->fd = -1; continue; }
      c->got = (size_t)-1;
      opened++;
    }
    if (!progress) usleep(200);
  }
  fprintf(stderr, "wsblast: %d/%d clients open; pushing %d frame(s) per write for %.1f s\n", opened, n, batch, seconds);
  uint64_t end = mono_us() + (uint64_t)(seconds * 1e6), frames = 0, full = 0, rounds = 0;
  char out[64 * 128];
  char drain[4096];
  while (mono_us() < end) {
    char f[160];
    int pl = snprintf(f + 2, sizeof f - 2,
                      "{\"type\":\"room_updated\",\"payload\":{\"roomId\":\"ts-%llu\",\"name\":\"Main Hall\"}}",
                      (unsigned long long)mono_us());
    f[0] = (char)0x81;
    f[1] = (char)pl;
    size_t fl = (size_t)pl + 2, ol = 0;
    for (int j = 0; j < batch; j++) { memcpy(out + ol, f, fl); ol += fl; }
    for (int i = 0; i < n; i++) {
      client_t *c = &cl[i];
      if (c->fd < 0) continue;
      if ((rounds & 1023) == 0) (void)!read(c->fd, drain, sizeof drain); /* pongs, if any */
      if (c->rem_len) {
        ssize_t w = write(c->fd, c->rem + c->rem_off, c->rem_len);
        if (w > 0) { c->rem_off += (size_t)w; c->rem_len -= (size_t)w; }
        if (c->rem_len) { full++; continue; }
      }
      ssize_t w = write(c->fd, out, ol);
      if (w < 0) {
        if (errno == EAGAIN) { full++; continue; }
        close(c->fd);
        c->fd = -1;
        continue;
      }
      frames += (uint64_t)batch;
      if ((size_t)w < ol) { memcpy(c->rem, out + w, ol - (size_t)w); c->rem_off = 0; c->rem_len = ol - (size_t)w; }
    }
    rounds++;
  }
  fprintf(stderr, "wsblast: wrote %llu frames in %.1f s (%.0f/s), socket-full skips %llu\n",
          (unsigned long long)frames, seconds, (double)frames / seconds, (unsigned long long)full);
  return 0;
}
