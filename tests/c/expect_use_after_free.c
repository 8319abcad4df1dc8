/*
 * A deliberate misuse that the tools must catch (TEST-PLAN A7): a limiter
 * used after rt_limiter_free, then freed twice. This is undefined behaviour
 * by contract (rt_limiter is a raw pointer); run.sh runs it only under ASan
 * and valgrind and passes when they report it. Without the tools the
 * poisoned magic usually refuses the calls (a deny with RT_INVALID_ARGUMENT,
 * and the second free does nothing), which the output shows.
 */
#include "harness.h"

int main(void) {
  rt_limits l = t_limits();
  rt_limiter *lim = t_new(&l);
  rt_limiter_free(lim);
  rt_decision d = rt_check_message(lim, 1, 1); /* use after free */
  printf("after free: allowed=%d reason=%s\n", (int)d.allowed, rt_reason_str(d.reason));
  rt_limiter_free(lim); /* double free */
  return 0;
}
