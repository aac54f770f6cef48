/*
 * A Sightwire camera in C: registers with a rendezvous under its certified device ID,
 * waits for a viewer, and streams an H.264 Annex-B file to it, one access unit per
 * frame, with the SDK's camera mode (the device runs on the library's own thread).
 *
 *   camera <rendezvous host:port> <rendezvous key, 64 hex> <device key file>
 *          <certificate file> <password> <clip.h264> [fps]
 *
 * The device key file holds the 32-byte private key as 64 hex digits (what the Rust
 * camera writes to its state directory); the certificate file holds the raw ID
 * certificate (`sightwire-rendezvous issuer issue --out`). A camera would read both from
 * flash: the SDK takes bytes, not paths.
 *
 * stdout carries one line per step (`registered`, `viewer_connected <peer>`,
 * `sent <frames>`), for the test that drives it. Build (see the Makefile beside it):
 *
 *   cc -std=c11 -O2 -Wall -Wextra -I crates/sightwire-ffi/include examples/c/camera.c \
 *      target/release/libsightwire_ffi.a -lpthread -ldl -lm -o camera
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sightwire.h"

/* How long to wait for registration and for a viewer, in milliseconds. */
#define REGISTER_TIMEOUT_MS 15000
#define VIEWER_TIMEOUT_MS 30000
/* How long to keep serving after the last frame (retransmissions, then goodbye). */
#define LINGER_MS 1500

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads a whole file; returns NULL on failure. */
static uint8_t *read_file(const char *path, size_t *len) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        return NULL;
    }
    size_t cap = 1 << 16, used = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        if (used == cap) {
            uint8_t *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        size_t n = fread(buf + used, 1, cap - used, file);
        used += n;
        if (n == 0) {
            break;
        }
    }
    fclose(file);
    *len = used;
    return buf;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes exactly `len` bytes of hex from `text` (surrounding whitespace allowed). */
static int parse_hex(const char *text, size_t text_len, uint8_t *out, size_t len) {
    while (text_len > 0 && (*text == ' ' || *text == '\n' || *text == '\r' || *text == '\t')) {
        text++;
        text_len--;
    }
    while (text_len > 0 && (text[text_len - 1] == ' ' || text[text_len - 1] == '\n' ||
                            text[text_len - 1] == '\r' || text[text_len - 1] == '\t')) {
        text_len--;
    }
    if (text_len != len * 2) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* ---- H.264 Annex-B access units ------------------------------------------------------
 * A new access unit starts at an access unit delimiter, at an SPS, PPS or SEI that
 * follows a slice, or at the first slice of a picture (first_mb_in_slice 0) that follows
 * a slice. Each unit keeps its start codes, so the frames written back to back are the
 * file again. Bytes before the first start code are ignored. */

struct access_unit {
    size_t start, end;
    bool keyframe, codec_config;
};

/* The next start code at or after `from`: sets the start code's offset (a 4-byte code
 * starts at its leading zero) and the NAL header's; returns 0 when there is none. */
static int next_start(const uint8_t *s, size_t n, size_t from, size_t *code, size_t *header) {
    for (size_t i = from; i + 3 <= n; i++) {
        if (s[i] == 0 && s[i + 1] == 0 && s[i + 2] == 1) {
            *code = (i > 0 && s[i - 1] == 0) ? i - 1 : i;
            *header = i + 3;
            return 1;
        }
    }
    return 0;
}

/* Splits `s` into access units; returns how many (at most `max`), or -1 if more. */
static long split_access_units(const uint8_t *s, size_t n, struct access_unit *units, size_t max) {
    size_t count = 0, code, header;
    bool open = false, seen_slice = false;
    int found = next_start(s, n, 0, &code, &header);
    while (found) {
        size_t next_code = n, next_header = 0;
        int more = next_start(s, n, header, &next_code, &next_header);
        size_t end = more ? next_code : n;
        if (header < n) {
            uint8_t type = s[header] & 0x1F;
            bool slice = type == 1 || type == 5;
            bool first_slice = slice && header + 1 < end && (s[header + 1] & 0x80);
            bool precedes = type == 6 || type == 7 || type == 8;
            bool begins = type == 9 || ((precedes || first_slice) && seen_slice);
            if (begins && open) {
                open = false;
                seen_slice = false;
            }
            if (!open) {
                if (count == max) {
                    return -1;
                }
                units[count] = (struct access_unit){code, end, false, false};
                count++;
                open = true;
            }
            struct access_unit *unit = &units[count - 1];
            unit->end = end;
            unit->keyframe |= type == 5;
            unit->codec_config |= type == 7;
            seen_slice |= slice;
        }
        found = more;
        code = next_code;
        header = next_header;
    }
    return (long)count;
}

/* Waits up to `timeout_ms` for an event of `kind`; prints every event it sees. */
static int wait_for(SightwireCamera *camera, SightwireEventKind kind, long timeout_ms,
                    SightwireEvent *out) {
    long long deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        SightwireEvent event;
        SightwireResult r = sightwire_camera_poll_event(camera, &event);
        if (r == SIGHTWIRE_RESULT_OK) {
            if (event.kind == kind) {
                *out = event;
                return 0;
            }
            continue;
        }
        if (r != SIGHTWIRE_RESULT_EMPTY) {
            fprintf(stderr, "poll_event: %d\n", (int)r);
            return -1;
        }
        sleep_ms(5);
    }
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr,
                "usage: %s <rendezvous host:port> <rendezvous key hex> <device key file> "
                "<certificate file> <password> <clip.h264> [fps]\n",
                argv[0]);
        return 2;
    }
    int fps = argc > 7 ? atoi(argv[7]) : 25;
    if (fps <= 0 || fps > 1000) {
        fprintf(stderr, "fps must be 1..1000\n");
        return 2;
    }
    uint8_t rendezvous_key[32], device_key[32];
    if (parse_hex(argv[2], strlen(argv[2]), rendezvous_key, 32) != 0) {
        fprintf(stderr, "the rendezvous key must be 64 hex digits\n");
        return 2;
    }
    size_t key_text_len = 0, cert_len = 0, clip_len = 0;
    uint8_t *key_text = read_file(argv[3], &key_text_len);
    uint8_t *cert = read_file(argv[4], &cert_len);
    uint8_t *clip = read_file(argv[6], &clip_len);
    if (!key_text || !cert || !clip) {
        fprintf(stderr, "cannot read the key, certificate or clip\n");
        return 1;
    }
    if (parse_hex((const char *)key_text, key_text_len, device_key, 32) != 0) {
        fprintf(stderr, "the device key file must hold 64 hex digits\n");
        return 1;
    }
    free(key_text);

    size_t max_units = clip_len / 4 + 1;
    struct access_unit *units = malloc(max_units * sizeof *units);
    long unit_count = units ? split_access_units(clip, clip_len, units, max_units) : -1;
    if (unit_count <= 0) {
        fprintf(stderr, "no access units in %s\n", argv[6]);
        return 1;
    }

    SightwireConfig *config = NULL;
    SightwireResult r = sightwire_config_new(device_key, sizeof device_key, cert, cert_len,
                                             argv[1], rendezvous_key, sizeof rendezvous_key,
                                             &config);
    free(cert);
    if (r != SIGHTWIRE_RESULT_OK) {
        fprintf(stderr, "sightwire_config_new: %d\n", (int)r);
        return 1;
    }
    if ((r = sightwire_config_set_password(config, argv[5])) != SIGHTWIRE_RESULT_OK) {
        fprintf(stderr, "sightwire_config_set_password: %d\n", (int)r);
        return 1;
    }
    SightwireCamera *camera = NULL;
    r = sightwire_camera_start(config, &camera);
    sightwire_config_free(config);
    if (r != SIGHTWIRE_RESULT_OK) {
        fprintf(stderr, "sightwire_camera_start: %d\n", (int)r);
        return 1;
    }

    int status = 1;
    SightwireEvent event;
    if (wait_for(camera, SIGHTWIRE_EVENT_KIND_REGISTERED, REGISTER_TIMEOUT_MS, &event) != 0) {
        fprintf(stderr, "not registered in time\n");
        goto out;
    }
    printf("registered\n");
    fflush(stdout);
    if (wait_for(camera, SIGHTWIRE_EVENT_KIND_VIEWER_CONNECTED, VIEWER_TIMEOUT_MS, &event) != 0) {
        fprintf(stderr, "no viewer in time\n");
        goto out;
    }
    printf("viewer_connected %llu\n", (unsigned long long)event.peer);
    fflush(stdout);

    long long start = now_ms();
    for (long i = 0; i < unit_count; i++) {
        long long due = start + i * 1000 / fps;
        long long wait = due - now_ms();
        if (wait > 0) {
            sleep_ms((long)wait);
        }
        SightwireFrame frame = {
            .data = clip + units[i].start,
            .len = units[i].end - units[i].start,
            .codec = SIGHTWIRE_CODEC_H264,
            .stream = 0,
            .keyframe = units[i].keyframe,
            .codec_config = units[i].codec_config,
            .capture_time_us = (uint64_t)i * 1000000u / (uint64_t)fps,
        };
        /* A full queue means the library's thread is behind: wait for room rather than
         * drop (a live encoder would drop instead). */
        while ((r = sightwire_camera_send_frame(camera, &frame)) == SIGHTWIRE_RESULT_QUEUE_FULL) {
            sleep_ms(1);
        }
        if (r != SIGHTWIRE_RESULT_OK) {
            fprintf(stderr, "sightwire_camera_send_frame: %d\n", (int)r);
            goto out;
        }
    }
    printf("sent %ld\n", unit_count);
    fflush(stdout);
    sleep_ms(LINGER_MS);
    status = 0;
out:
    sightwire_camera_stop(camera);
    free(units);
    free(clip);
    return status;
}
