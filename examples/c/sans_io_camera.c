/*
 * The same camera as camera.c, with the SDK's sans-IO mode: this program owns the UDP
 * socket, the clock and the event loop (poll(2)), as firmware with its own loop does.
 * The library only turns datagrams and deadlines into datagrams, events and the next
 * deadline.
 *
 *   sans_io_camera <rendezvous ip:port> <rendezvous key, 64 hex> <device key file>
 *                  <certificate file> <password> <clip.h264> [fps]
 *
 * IPv4 only, to stay short. The loop, after every input (a datagram, a deadline, a
 * frame): send every transmit, read every event, then wait for the socket, the device's
 * deadline or the next frame.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

static uint64_t monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t unix_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static struct sockaddr_in to_sockaddr(const SightwireAddress *a) {
    struct sockaddr_in sin = {0};
    sin.sin_family = AF_INET;
    memcpy(&sin.sin_addr, a->address, 4);
    sin.sin_port = htons(a->port);
    return sin;
}

static SightwireAddress from_sockaddr(const struct sockaddr_in *sin) {
    SightwireAddress a = {.family = SIGHTWIRE_FAMILY_IPV4, .port = ntohs(sin->sin_port)};
    memcpy(a.address, &sin->sin_addr, 4);
    return a;
}

/* Sends every datagram the device has queued, each with the TTL it asks for. */
static void flush(SightwireDevice *device, int sock) {
    static uint8_t buf[SIGHTWIRE_MAX_DATAGRAM_LEN];
    SightwireTransmit t;
    while (sightwire_device_poll_transmit(device, &t, buf, sizeof buf) == SIGHTWIRE_RESULT_OK) {
        if (t.destination.family != SIGHTWIRE_FAMILY_IPV4) {
            continue;
        }
        struct sockaddr_in to = to_sockaddr(&t.destination);
        int ttl = t.ttl, normal = 64;
        if (ttl) {
            setsockopt(sock, IPPROTO_IP, IP_TTL, &ttl, sizeof ttl);
        }
        sendto(sock, buf, t.len, 0, (struct sockaddr *)&to, sizeof to);
        if (ttl) {
            setsockopt(sock, IPPROTO_IP, IP_TTL, &normal, sizeof normal);
        }
    }
}

/* The local address the OS would use towards `remote` (no packet is sent). */
static int local_ip_towards(const struct sockaddr_in *remote, SightwireAddress *out) {
    int probe = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in local;
    socklen_t len = sizeof local;
    int ok = probe >= 0 && connect(probe, (const struct sockaddr *)remote, sizeof *remote) == 0 &&
             getsockname(probe, (struct sockaddr *)&local, &len) == 0;
    if (probe >= 0) {
        close(probe);
    }
    if (ok) {
        *out = from_sockaddr(&local);
    }
    return ok ? 0 : -1;
}

int main(int argc, char **argv) {
    struct inputs in = {0};
    int status = read_inputs(argc, argv, &in);
    if (status != 0) {
        return status;
    }
    /* The rendezvous as an IPv4 address and port (the route to it gives the local IP). */
    char host[64];
    struct sockaddr_in rendezvous = {.sin_family = AF_INET};
    const char *colon = strrchr(argv[1], ':');
    size_t host_len = colon ? (size_t)(colon - argv[1]) : 0;
    if (!colon || host_len >= sizeof host) {
        fprintf(stderr, "the rendezvous must be ip:port\n");
        return 2;
    }
    memcpy(host, argv[1], host_len);
    host[host_len] = 0;
    rendezvous.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &rendezvous.sin_addr) != 1) {
        fprintf(stderr, "the rendezvous must be an IPv4 address and port\n");
        return 2;
    }

    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in bound = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t bound_len = sizeof bound;
    if (sock < 0 || bind(sock, (struct sockaddr *)&bound, sizeof bound) != 0 ||
        getsockname(sock, (struct sockaddr *)&bound, &bound_len) != 0) {
        perror("socket");
        return 1;
    }
    SightwireConfig *config = configure(&in, argv[1], argv[5]);
    if (!config) {
        return 1;
    }
    sightwire_config_set_local_port(config, ntohs(bound.sin_port));
    SightwireDevice *device = NULL;
    SightwireResult r = sightwire_device_new(config, monotonic_us(), &device);
    sightwire_config_free(config);
    if (r != SIGHTWIRE_RESULT_OK) {
        fprintf(stderr, "sightwire_device_new: %d\n", (int)r);
        return 1;
    }
    SightwireAddress local;
    sightwire_device_set_unix_time(device, unix_us());
    if (local_ip_towards(&rendezvous, &local) == 0) {
        sightwire_device_set_local_ip(device, monotonic_us(), &local);
    }
    sightwire_device_handle_timeout(device, monotonic_us());

    status = 1;
    uint64_t started = monotonic_us();
    uint64_t streaming_since = 0, done_at = 0;
    bool registered = false;
    long next = 0;
    static uint8_t datagram[65536];
    for (;;) {
        flush(device, sock);
        SightwireEvent event;
        while (sightwire_device_poll_event(device, &event) == SIGHTWIRE_RESULT_OK) {
            if (event.kind == SIGHTWIRE_EVENT_KIND_REGISTERED && !registered) {
                registered = true;
                printf("registered\n");
                fflush(stdout);
            } else if (event.kind == SIGHTWIRE_EVENT_KIND_VIEWER_CONNECTED && !streaming_since) {
                streaming_since = monotonic_us();
                printf("viewer_connected %llu\n", (unsigned long long)event.peer);
                fflush(stdout);
            }
        }
        uint64_t now = monotonic_us();
        if (!registered && now - started > REGISTER_TIMEOUT_MS * 1000ull) {
            fprintf(stderr, "not registered in time\n");
            break;
        }
        if (!streaming_since && now - started > VIEWER_TIMEOUT_MS * 1000ull) {
            fprintf(stderr, "no viewer in time\n");
            break;
        }
        if (done_at && now >= done_at) {
            status = 0;
            break;
        }
        /* The next wake-up: the device's deadline, or the next frame. */
        uint64_t wake = now + 50000;
        if (streaming_since && next < in.unit_count) {
            uint64_t due = streaming_since + (uint64_t)next * 1000000u / (uint64_t)in.fps;
            if (now >= due) {
                SightwireFrame frame = frame_of(&in, next);
                r = sightwire_device_send_frame(device, now, &frame, NULL);
                if (r != SIGHTWIRE_RESULT_OK) {
                    fprintf(stderr, "sightwire_device_send_frame: %d\n", (int)r);
                    break;
                }
                if (++next == in.unit_count) {
                    printf("sent %ld\n", in.unit_count);
                    fflush(stdout);
                    done_at = now + LINGER_MS * 1000ull;
                }
                continue;
            }
            wake = due;
        }
        uint64_t deadline = 0;
        bool has_deadline = sightwire_device_poll_timeout(device, &deadline) == SIGHTWIRE_RESULT_OK;
        if (has_deadline && deadline < wake) {
            wake = deadline;
        }
        int timeout_ms = wake > now ? (int)((wake - now + 999) / 1000) : 0;
        struct pollfd pfd = {.fd = sock, .events = POLLIN};
        if (poll(&pfd, 1, timeout_ms) > 0) {
            struct sockaddr_in from;
            socklen_t from_len = sizeof from;
            ssize_t n = recvfrom(sock, datagram, sizeof datagram, 0, (struct sockaddr *)&from,
                                 &from_len);
            if (n >= 0 && from.sin_family == AF_INET) {
                SightwireAddress sender = from_sockaddr(&from);
                sightwire_device_set_unix_time(device, unix_us());
                sightwire_device_handle_datagram(device, monotonic_us(), &sender, datagram,
                                                 (size_t)n);
            }
        }
        /* Timers fire when due, whether or not datagrams kept arriving meanwhile. */
        if (has_deadline && monotonic_us() >= deadline) {
            sightwire_device_handle_timeout(device, monotonic_us());
        }
    }
    /* Goodbye to the viewer and deregistration. */
    sightwire_device_shutdown(device, monotonic_us());
    flush(device, sock);
    sightwire_device_free(device);
    close(sock);
    free_inputs(&in);
    return status;
}
