/*
 * A tiny test harness for the C ABI tests: counts checks, prints each
 * failure with its line, and ends with "N passed, N failed".
 */
#ifndef RT_TEST_HARNESS_H
#define RT_TEST_HARNESS_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ratethrottle.h"

static int t_passed;
static int t_failed;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (cond) {                                                              \
      t_passed++;                                                            \
    } else {                                                                 \
      t_failed++;                                                            \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,     \
              #cond);                                                        \
    }                                                                        \
  } while (0)

#define CHECK_EQ(a, b)                                                       \
  do {                                                                       \
    uint64_t a_ = (uint64_t)(a);                                             \
    uint64_t b_ = (uint64_t)(b);                                             \
    if (a_ == b_) {                                                          \
      t_passed++;                                                            \
    } else {                                                                 \
      t_failed++;                                                            \
      fprintf(stderr, "%s:%d: %s == %s failed: %" PRIu64 " != %" PRIu64     \
              "\n", __FILE__, __LINE__, #a, #b, a_, b_);                     \
    }                                                                        \
  } while (0)

#define CHECK_STR(a, b)                                                      \
  do {                                                                       \
    const char *a_ = (a);                                                    \
    const char *b_ = (b);                                                    \
    if (a_ != NULL && strcmp(a_, b_) == 0) {                                 \
      t_passed++;                                                            \
    } else {                                                                 \
      t_failed++;                                                            \
      fprintf(stderr, "%s:%d: %s == \"%s\" failed: got \"%s\"\n", __FILE__,  \
              __LINE__, #a, b_, a_ ? a_ : "(null)");                         \
    }                                                                        \
  } while (0)

/* A decision: allowed, reason and retry_after_ms all as expected. */
#define CHECK_DECISION(d, want_allowed, want_reason, want_retry)             \
  do {                                                                       \
    rt_decision d_ = (d);                                                    \
    if (d_.allowed == (want_allowed) && d_.reason == (want_reason) &&        \
        d_.retry_after_ms == (uint64_t)(want_retry)) {                       \
      t_passed++;                                                            \
    } else {                                                                 \
      t_failed++;                                                            \
      fprintf(stderr,                                                        \
              "%s:%d: %s: want allowed=%d reason=%s retry=%" PRIu64          \
              ", got allowed=%d reason=%s retry=%" PRIu64 "\n",              \
              __FILE__, __LINE__, #d, (int)(want_allowed),                   \
              rt_reason_str(want_reason), (uint64_t)(want_retry),            \
              (int)d_.allowed, rt_reason_str(d_.reason), d_.retry_after_ms); \
    }                                                                        \
  } while (0)

/* Prints the summary line and gives the exit status. */
static inline int t_done(const char *name) {
  printf("%s: %d passed, %d failed\n", name, t_passed, t_failed);
  return t_failed == 0 ? 0 : 1;
}

/* Limits with small capacities, so that tests run fast under valgrind. */
static inline rt_limits t_limits(void) {
  rt_limits l;
  rt_limits_default(&l);
  l.max_clients = 64;
  l.max_connections = 256;
  return l;
}

/* A new heap limiter; aborts the test program when creation fails. */
static inline rt_limiter *t_new(const rt_limits *l) {
  rt_limiter *lim = NULL;
  rt_status s = rt_limiter_new(l, &lim);
  if (s != RT_STATUS_OK || lim == NULL) {
    char msg[256];
    rt_limits_error(l, msg, sizeof msg);
    fprintf(stderr, "rt_limiter_new: %s (%s)\n", rt_status_str(s), msg);
    t_failed++;
    return NULL;
  }
  return lim;
}

static inline rt_stats t_stats(const rt_limiter *lim) {
  rt_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  if (rt_limiter_stats(lim, &s) != RT_STATUS_OK) {
    fprintf(stderr, "rt_limiter_stats failed\n");
    t_failed++;
  }
  return s;
}

#define ID(s) ((const uint8_t *)(s)), (sizeof(s) - 1)

#endif /* RT_TEST_HARNESS_H */
