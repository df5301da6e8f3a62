/* bench/mux_floor.py's "floor-c": the floor of the openssh backend's round trip with no
   Python at all. Accept (non-blocking), hand the socket to the ssh -M master on a spare mux
   connection (hello sent ahead, the master's never waited for): MUX_C_NEW_STDIO_FWD and the
   descriptor twice in one sendmmsg, as the backend does (PROTOCOL.mux, mux.c); close our
   copy at once; watch the mux connection for the master's hang-up, then close it and top
   the spares up. No counters, no reset when the master dies, no replies read: a lower bound
   for any front that hands connections to the master. Runs until killed.
   argv: listening_fd control_path target_port (the target on 127.0.0.1). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/epoll.h>
#define SPARES 8
static int spares[64], nspare = 0;
static const char *path;
static void put32(unsigned char *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); }
static int spare(void) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); exit(1); }
    unsigned char h[12]; put32(h, 8); put32(h + 4, 1); put32(h + 8, 4);
    if (write(s, h, 12) != 12) { perror("hello"); exit(1); }
    return s;
}
int main(int argc, char **argv) {
    int lfd = atoi(argv[1]); path = argv[2]; uint32_t port = atoi(argv[3]);
    const char *host = "127.0.0.1"; size_t hl = strlen(host);
    unsigned char req[256]; size_t rl = 4 + 4 + 4 + 4 + 4 + hl + 4;
    put32(req, rl - 4); put32(req + 4, 0x10000008); put32(req + 12, 0); put32(req + 16, hl);
    memcpy(req + 20, host, hl); put32(req + 20 + hl, port);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    while (nspare < SPARES) spares[nspare++] = spare();
    uint32_t rid = 0; char nul = 0;
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } c1, c2;
    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, -1), ended = 0;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int conn = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (conn < 0) continue;
                int s = nspare ? spares[--nspare] : spare();
                put32(req + 8, ++rid);
                struct iovec v0 = {req, rl}, v1 = {&nul, 1}, v2 = {&nul, 1};
                struct mmsghdr m[3]; memset(m, 0, sizeof m);
                m[0].msg_hdr.msg_iov = &v0; m[0].msg_hdr.msg_iovlen = 1;
                struct cmsghdr *cm;
                m[1].msg_hdr.msg_iov = &v1; m[1].msg_hdr.msg_iovlen = 1;
                m[1].msg_hdr.msg_control = c1.buf; m[1].msg_hdr.msg_controllen = sizeof c1.buf;
                cm = CMSG_FIRSTHDR(&m[1].msg_hdr); cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int)); memcpy(CMSG_DATA(cm), &conn, sizeof(int));
                m[2].msg_hdr.msg_iov = &v2; m[2].msg_hdr.msg_iovlen = 1;
                m[2].msg_hdr.msg_control = c2.buf; m[2].msg_hdr.msg_controllen = sizeof c2.buf;
                cm = CMSG_FIRSTHDR(&m[2].msg_hdr); cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int)); memcpy(CMSG_DATA(cm), &conn, sizeof(int));
                if (sendmmsg(s, m, 3, MSG_DONTWAIT) != 3) { perror("sendmmsg"); exit(1); }
                close(conn);
                struct epoll_event e2 = {.events = EPOLLRDHUP, .data.fd = s};
                epoll_ctl(ep, EPOLL_CTL_ADD, s, &e2);
            } else {
                close(fd); ended = 1;
            }
        }
        if (ended) while (nspare < SPARES) spares[nspare++] = spare();
    }
}
