/* C quick start: build with `make test-c` or by hand (see README.md). */
#include <stdio.h>
#include <string.h>

#include "ratethrottle.h"

int main(void) {
    rt_limits limits;
    rt_limits_default(&limits); /* the seed's defaults, struct_size set */
    limits.window_ms = 1000;
    limits.messages_per_window = 2;

    rt_limiter *lim = NULL;
    rt_status st = rt_limiter_new(&limits, &lim);
    if (st != RT_STATUS_OK) {
        char why[256];
        rt_limits_error(&limits, why, sizeof why);
        fprintf(stderr, "rt_limiter_new: %s: %s\n", rt_status_str(st), why);
        return 1;
    }

    const char *ip = "203.0.113.7"; /* any bytes: an IP, a user id, a room */
    rt_conn conn = 0;
    rt_decision d = rt_connect_at(lim, (const uint8_t *)ip, strlen(ip), 0, &conn);
    printf("connect: %s\n", d.allowed ? "allowed" : rt_reason_str(d.reason));
    if (!d.allowed) {
        rt_limiter_free(lim);
        return 1;
    }

    for (int i = 1; i <= 3; i++) {
        d = rt_check_message_at(lim, conn, 100, 10); /* 100 bytes at t = 10 ms */
        printf("message %d: %s", i, d.allowed ? "allowed" : rt_reason_str(d.reason));
        if (!d.allowed)
            printf(", retry after %llu ms", (unsigned long long)d.retry_after_ms);
        printf("\n");
    }

    rt_disconnect(lim, conn); /* frees the concurrency slot; idempotent */
    rt_limiter_free(lim);
    return 0;
}
