/* Load generator for the bench session: open(O_WRONLY|O_CREAT)+close at a target rate.
 * usage: openloop PATH RATE_PER_SEC SECONDS [COUNT [NFILES]]   (RATE 0 = as fast as
 *        possible; COUNT: stop after exactly that many opens, 0 = no limit; NFILES: PATH is a
 *        printf pattern with one %d, and open i opens PATH % (i mod NFILES): a different file
 *        each time)
 * Prints the number of opens done and the achieved rate. */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: openloop PATH RATE SECONDS [COUNT [NFILES]]\n");
        return 2;
    }
    const char *path = argv[1];
    double rate = atof(argv[2]), secs = atof(argv[3]);
    long count = argc >= 5 ? atol(argv[4]) : 0;
    long nfiles = argc == 6 ? atol(argv[5]) : 0;
    char name[PATH_MAX];
    double start = now(), end = start + secs;
    long n = 0;
    for (;;) {
        /* batches of 64 between clock reads keep the loop tight */
        for (int i = 0; i < 64 && (!count || n < count); i++) {
            const char *p = path;
            if (nfiles > 0) {
                snprintf(name, sizeof name, path, (int)(n % nfiles));
                p = name;
            }
            int fd = open(p, O_WRONLY | O_CREAT, 0600);
            if (fd >= 0)
                close(fd);
            n++;
        }
        double t = now();
        if (t >= end || (count && n >= count))
            break;
        if (rate > 0) {
            double due = start + n / rate;
            if (due > t) {
                struct timespec d = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
                nanosleep(&d, NULL);
            }
        }
    }
    double el = now() - start;
    printf("%ld %.0f\n", n, n / el);
    return 0;
}
