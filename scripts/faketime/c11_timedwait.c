/* Routes C11 cnd_timedwait through pthread_cond_timedwait, so that libfaketime,
 * which interposes the latter but not the former, converts its deadline.
 *
 * librdkafka waits with glibc's C11 cnd_timedwait and an absolute deadline read
 * from the (faked) CLOCK_REALTIME; glibc hands it to the kernel unconverted, so
 * under plain libfaketime a year ahead every librdkafka timer waits a year and
 * every Kafka test hangs. Preload this library before libfaketime. Used only by
 * scripts/test-a-year-ahead.sh; glibc's cnd_t and mtx_t are its pthread types. */
#include <errno.h>
#include <pthread.h>
#include <threads.h>

int cnd_timedwait(cnd_t *restrict cond, mtx_t *restrict mutex,
                  const struct timespec *restrict deadline) {
  int r = pthread_cond_timedwait((pthread_cond_t *)cond,
                                 (pthread_mutex_t *)mutex, deadline);
  if (r == 0)
    return thrd_success;
  return r == ETIMEDOUT ? thrd_timedout : thrd_error;
}
