/*
 * What the two example cameras share: reading the identity and the clip, and splitting
 * an H.264 Annex-B stream into access units.
 */
#ifndef SIGHTWIRE_EXAMPLE_COMMON_H
#define SIGHTWIRE_EXAMPLE_COMMON_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
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

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static inline long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads a whole file; returns NULL on failure. */
static inline uint8_t *read_file(const char *path, size_t *len) {
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

static inline int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes exactly `len` bytes of hex from `text` (surrounding whitespace allowed). */
static inline int parse_hex(const char *text, size_t text_len, uint8_t *out, size_t len) {
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
static inline int next_start(const uint8_t *s, size_t n, size_t from, size_t *code, size_t *header) {
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
static inline long split_access_units(const uint8_t *s, size_t n, struct access_unit *units, size_t max) {
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

/* The identity and clip files of the command line, read and checked. */
struct inputs {
    uint8_t rendezvous_key[32];
    uint8_t device_key[32];
    uint8_t *cert;
    size_t cert_len;
    uint8_t *clip;
    size_t clip_len;
    struct access_unit *units;
    long unit_count;
    int fps;
};

#define USAGE "<rendezvous host:port> <rendezvous key hex> <device key file> " \
              "<certificate file> <password> <clip.h264> [fps]"

/* Reads argv (as USAGE says) into `in`; returns 0, or the exit status to fail with. */
static inline int read_inputs(int argc, char **argv, struct inputs *in) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s " USAGE "\n", argv[0]);
        return 2;
    }
    in->fps = argc > 7 ? atoi(argv[7]) : 25;
    if (in->fps <= 0 || in->fps > 1000) {
        fprintf(stderr, "fps must be 1..1000\n");
        return 2;
    }
    if (parse_hex(argv[2], strlen(argv[2]), in->rendezvous_key, 32) != 0) {
        fprintf(stderr, "the rendezvous key must be 64 hex digits\n");
        return 2;
    }
    size_t key_text_len = 0;
    uint8_t *key_text = read_file(argv[3], &key_text_len);
    in->cert = read_file(argv[4], &in->cert_len);
    in->clip = read_file(argv[6], &in->clip_len);
    if (!key_text || !in->cert || !in->clip) {
        fprintf(stderr, "cannot read the key, certificate or clip\n");
        return 1;
    }
    int bad_key = parse_hex((const char *)key_text, key_text_len, in->device_key, 32);
    free(key_text);
    if (bad_key) {
        fprintf(stderr, "the device key file must hold 64 hex digits\n");
        return 1;
    }
    size_t max_units = in->clip_len / 4 + 1;
    in->units = malloc(max_units * sizeof *in->units);
    in->unit_count = in->units ? split_access_units(in->clip, in->clip_len, in->units, max_units) : -1;
    if (in->unit_count <= 0) {
        fprintf(stderr, "no access units in %s\n", argv[6]);
        return 1;
    }
    return 0;
}

/* Access unit `i` of the clip as a frame: H.264, stream 0, capture time from the rate. */
static inline SightwireFrame frame_of(const struct inputs *in, long i) {
    SightwireFrame frame = {
        .data = in->clip + in->units[i].start,
        .len = in->units[i].end - in->units[i].start,
        .codec = SIGHTWIRE_CODEC_H264,
        .stream = 0,
        .keyframe = in->units[i].keyframe,
        .codec_config = in->units[i].codec_config,
        .capture_time_us = (uint64_t)i * 1000000u / (uint64_t)in->fps,
    };
    return frame;
}

/* A configuration from the inputs and the password; NULL (after a message) on failure. */
static inline SightwireConfig *configure(const struct inputs *in, const char *rendezvous,
                                  const char *password) {
    SightwireConfig *config = NULL;
    SightwireResult r = sightwire_config_new(in->device_key, sizeof in->device_key, in->cert,
                                             in->cert_len, rendezvous, in->rendezvous_key,
                                             sizeof in->rendezvous_key, &config);
    if (r != SIGHTWIRE_RESULT_OK) {
        fprintf(stderr, "sightwire_config_new: %d\n", (int)r);
        return NULL;
    }
    if ((r = sightwire_config_set_password(config, password)) != SIGHTWIRE_RESULT_OK) {
        fprintf(stderr, "sightwire_config_set_password: %d\n", (int)r);
        sightwire_config_free(config);
        return NULL;
    }
    return config;
}

static inline void free_inputs(struct inputs *in) {
    free(in->units);
    free(in->clip);
    free(in->cert);
}

#endif
