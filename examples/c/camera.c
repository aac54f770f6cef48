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

#include "common.h"

/* Waits up to `timeout_ms` for an event of `kind`. */
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
    struct inputs in = {0};
    int status = read_inputs(argc, argv, &in);
    if (status != 0) {
        return status;
    }
    SightwireConfig *config = configure(&in, argv[1], argv[5]);
    if (!config) {
        return 1;
    }
    SightwireCamera *camera = NULL;
    SightwireResult r = sightwire_camera_start(config, &camera);
    sightwire_config_free(config);
    if (r != SIGHTWIRE_RESULT_OK) {
        fprintf(stderr, "sightwire_camera_start: %d\n", (int)r);
        return 1;
    }

    status = 1;
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
    for (long i = 0; i < in.unit_count; i++) {
        long long wait = start + i * 1000 / in.fps - now_ms();
        if (wait > 0) {
            sleep_ms((long)wait);
        }
        SightwireFrame frame = frame_of(&in, i);
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
    printf("sent %ld\n", in.unit_count);
    fflush(stdout);
    sleep_ms(LINGER_MS);
    status = 0;
out:
    sightwire_camera_stop(camera);
    free_inputs(&in);
    return status;
}
