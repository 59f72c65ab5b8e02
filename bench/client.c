/* Benchmark client for 127.0.0.1 only.
 *
 *   client rate PORT SECONDS MAX CONCURRENCY
 *       connect, one echo round trip, close (RST, so no TIME_WAIT piles up); repeat until SECONDS
 *       or MAX connections. Prints "ok N failed F seconds S".
 *   client hold PORT N [SOURCES]
 *       open N connections (from SOURCES loopback addresses, default 1), one echo round trip on each; prints "held OK FAILED". Then reads commands
 *       on stdin: "probe [BYTES]" (send BYTES, default 1, on each open connection and read them back;
 *       prints "alive K") or "quit".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static int sources = 1; /* spread connections over 127.0.0.1 .. 127.0.0.N: each source address has its own
                           28,000 ephemeral ports towards one listen port */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int start_connect(void) {
    static unsigned long seq;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (sources > 1) {
        int one = 1;
        setsockopt(fd, IPPROTO_IP, 24 /* IP_BIND_ADDRESS_NO_PORT */, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + (seq++ % sources));
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) { close(fd); return -1; }
    }
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void hard_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* state per fd: 0 connecting, 1 waiting for echo */
static unsigned char *state;

static int rate(double seconds, long max, int conc) {
    int ep = epoll_create1(0);
    long ok = 0, failed = 0, started = 0;
    double t0 = now(), end = t0 + seconds;
    struct epoll_event evs[1024];
    int inflight = 0;
    for (;;) {
        while (inflight < conc && started < max && now() < end) {
            int fd = start_connect();
            started++;
            if (fd < 0) { failed++; continue; }
            state[fd] = 0;
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            inflight++;
        }
        if (inflight == 0) break;
        int n = epoll_wait(ep, evs, 1024, 5000);
        if (n <= 0) { failed += inflight; break; }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && state[fd] == 0) {
                failed++; inflight--; close(fd); continue;
            }
            if (state[fd] == 0) {
                if (write(fd, "x", 1) != 1) { failed++; inflight--; close(fd); continue; }
                state[fd] = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            } else {
                char c;
                if (read(fd, &c, 1) == 1) ok++; else failed++;
                inflight--;
                hard_close(fd);
            }
        }
    }
    printf("ok %ld failed %ld seconds %.3f\n", ok, failed, now() - t0);
    return 0;
}

static int roundtrip_all(int *fds, int n, long size, int *alive_out) {
    /* send `size` bytes on every open connection and read them back (30 s at most) */
    static char out[65536], in[65536];
    memset(out, 'p', sizeof out);
    long *sent = calloc(n, sizeof *sent), *got = calloc(n, sizeof *got);
    int ep = epoll_create1(0), pending = 0, alive = 0;
    for (int i = 0; i < n; i++) {
        if (fds[i] < 0) continue;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        pending++;
    }
    struct epoll_event evs[1024];
    double end = now() + 30;
    while (pending > 0 && now() < end) {
        int k = epoll_wait(ep, evs, 1024, 1000);
        for (int j = 0; j < k; j++) {
            int i = evs[j].data.u32, fd = fds[i];
            if (fd < 0) continue;
            int dead = 0;
            if ((evs[j].events & EPOLLOUT) && sent[i] < size) {
                long want = size - sent[i] < (long)sizeof out ? size - sent[i] : (long)sizeof out;
                ssize_t w = write(fd, out, want);
                if (w > 0) sent[i] += w; else if (errno != EAGAIN) dead = 1;
                if (sent[i] >= size) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                }
            }
            if (!dead && (evs[j].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                ssize_t r = read(fd, in, sizeof in);
                if (r > 0) got[i] += r; else if (r == 0 || errno != EAGAIN) dead = 1;
            }
            if (dead) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                fds[i] = -1;
                pending--;
            } else if (got[i] >= size && sent[i] >= size) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                alive++;
                pending--;
            }
        }
    }
    close(ep);
    free(sent);
    free(got);
    *alive_out = alive;
    return 0;
}

static int hold(long n) {
    int *fds = calloc(n, sizeof *fds);
    int ep = epoll_create1(0);
    long opened = 0, failed = 0, done = 0, inflight = 0;
    struct epoll_event evs[1024];
    while (done < n) {
        while (inflight < 512 && opened < n) {
            int fd = start_connect();
            fds[opened] = fd;
            if (fd < 0) { failed++; done++; opened++; continue; }
            struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = opened};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            state[fd] = 0;
            opened++;
            inflight++;
        }
        int k = epoll_wait(ep, evs, 1024, 10000);
        if (k <= 0) break;
        for (int j = 0; j < k; j++) {
            long i = evs[j].data.u64;
            int fd = fds[i];
            if (state[fd] == 0) {
                if ((evs[j].events & (EPOLLERR | EPOLLHUP)) || write(fd, "h", 1) != 1) {
                    close(fd); fds[i] = -1; failed++; done++; inflight--; continue;
                }
                state[fd] = 1;
                struct epoll_event ev = {.events = EPOLLIN, .data.u64 = i};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            } else {
                char c;
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                if (read(fd, &c, 1) != 1) { close(fd); fds[i] = -1; failed++; }
                done++;
                inflight--;
            }
        }
    }
    failed += n - done;
    printf("held %ld %ld\n", n - failed, failed);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "probe", 5)) {
            int alive;
            long size = atol(line + 5);
            roundtrip_all(fds, (int)n, size > 0 ? size : 1, &alive);
            printf("alive %d\n", alive);
            fflush(stdout);
        } else {
            break;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: client rate PORT SECONDS MAX CONC | client hold PORT N\n"); return 2; }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    state = calloc(rl.rlim_max + 1, 1);
    target.sin_family = AF_INET;
    target.sin_port = htons(atoi(argv[2]));
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (!strcmp(argv[1], "rate") && argc == 6) return rate(atof(argv[3]), atol(argv[4]), atoi(argv[5]));
    if (!strcmp(argv[1], "hold")) {
        if (argc > 4) sources = atoi(argv[4]);
        return hold(atol(argv[3]));
    }
    return 2;
}
