// The machine's floor for mqtt-bench's latency scenario, with no broker code at all: an
// echo server (epoll, read, write back) and a paced client over loopback TCP, N connections,
// RATE messages a second in all, each an 8-byte send time echoed back; prints the round
// trip's p50/p99/p99.9/max in microseconds as one JSON line. Run by floor.sh, which pins
// the two as mqtt-compare.sh pins a broker and the generator.
// Usage: echo server PORT | echo client PORT CONNS RATE SECONDS WARMUP
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
static uint64_t now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec; }
static int cmp(const void *a, const void *b) { uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
    int port = atoi(argv[2]), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int ep = epoll_create1(0);
    struct epoll_event ev, evs[64];
    if (!strcmp(argv[1], "server")) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(l, (void *)&a, sizeof a) || listen(l, 128)) { perror("listen"); return 1; }
        ev.events = EPOLLIN; ev.data.fd = l; epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
        for (;;) {
            int n = epoll_wait(ep, evs, 64, -1);
            for (int i = 0; i < n; i++) {
                int fd = evs[i].data.fd;
                if (fd == l) {
                    int c = accept(l, 0, 0);
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    ev.events = EPOLLIN; ev.data.fd = c; epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                } else {
                    char buf[4096];
                    ssize_t r = read(fd, buf, sizeof buf);
                    if (r <= 0) { close(fd); continue; }
                    if (write(fd, buf, r) != r) perror("write");
                }
            }
        }
    }
    int conns = atoi(argv[3]); double rate = atof(argv[4]), secs = atof(argv[5]), warm = atof(argv[6]);
    int *fd = calloc(conns, sizeof(int));
    for (int i = 0; i < conns; i++) {
        fd[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd[i], (void *)&a, sizeof a)) { perror("connect"); return 1; }
        setsockopt(fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ev.events = EPOLLIN; ev.data.fd = fd[i]; epoll_ctl(ep, EPOLL_CTL_ADD, fd[i], &ev);
    }
    int tf = timerfd_create(CLOCK_MONOTONIC, 0);
    uint64_t period = (uint64_t)(1e9 / rate);
    struct itimerspec its = {.it_interval = {0, period}, .it_value = {0, period}};
    timerfd_settime(tf, 0, &its, 0);
    ev.events = EPOLLIN; ev.data.fd = tf; epoll_ctl(ep, EPOLL_CTL_ADD, tf, &ev);
    size_t cap = (size_t)(rate * (secs + warm)) + 1000, n = 0;
    uint64_t *lat = malloc(cap * sizeof(uint64_t));
    uint64_t start = now_ns(), measure_from = start + (uint64_t)(warm * 1e9), end = measure_from + (uint64_t)(secs * 1e9);
    uint64_t next = start, sent = 0; int rr = 0;
    while (now_ns() < end) {
        int k = epoll_wait(ep, evs, 64, 100);
        for (int i = 0; i < k; i++) {
            if (evs[i].data.fd == tf) {
                uint64_t exp; if (read(tf, &exp, 8) < 0) continue;
                uint64_t t = now_ns();
                // Paced: every message due by now goes out (the schedule, not the timer's ticks).
                while (next <= t) { uint64_t ts = now_ns(); if (write(fd[rr], &ts, 8) != 8) perror("w"); rr = (rr + 1) % conns; next += period; sent++; }
            } else {
                uint64_t buf[512]; ssize_t r = read(evs[i].data.fd, buf, sizeof buf);
                uint64_t t = now_ns();
                // Latency from when the message was written (as mqtt-bench: the stamp in its payload).
                for (ssize_t j = 0; j < r / 8; j++) if (buf[j] >= measure_from && n < cap) lat[n++] = t - buf[j];
            }
        }
    }
    qsort(lat, n, 8, cmp);
    printf("{\"echo\":true,\"conns\":%d,\"rate\":%.0f,\"samples\":%zu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f}\n", conns, rate, n,
           lat[n / 2] / 1e3, lat[(size_t)(n * 0.99)] / 1e3, lat[(size_t)(n * 0.999)] / 1e3, lat[n - 1] / 1e3);
    return 0;
}
