/*
 * dicomsortd-generator.c - main() of the systemd generator installed as
 * /lib/systemd/system-generators/dicomsortd-generator (generator.h).
 *
 * systemd calls it as `dicomsortd-generator NORMAL_DIR EARLY_DIR LATE_DIR`
 * at boot and at every daemon-reload; the drop-ins go to NORMAL_DIR, below
 * /etc/systemd/system, so an admin's drop-in of the same name wins. Run by
 * hand (e.g. `dicomsortd-generator /tmp/x /tmp/x /tmp/x`) it shows what
 * systemd would get.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "dicomsort/generator.h"

/*
 * Where a line goes: under systemd (which sets $SYSTEMD_SCOPE for its
 * generators since 251) the kernel log, which journald reads once it runs
 * and which exists before it does; else stderr. O_NONBLOCK: a /dev/kmsg
 * that is a FIFO nobody reads (some containers) fails instead of blocking
 * the boot.
 */
static FILE *log_stream(void)
{
	FILE *f = NULL;
	int fd;

	if (getenv("SYSTEMD_SCOPE") == NULL)
		return stderr;
	fd = open("/dev/kmsg", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd != -1 && (f = fdopen(fd, "w")) == NULL)
		close(fd);
	if (f == NULL)
		return stderr;
	setvbuf(f, NULL, _IOLBF, 0);	/* one write(2), one kmsg record */
	return f;
}

int main(int argc, char **argv)
{
	const char *conf_dir = getenv("DICOMSORTD_GENERATOR_CONF_DIR");
	FILE *log;

	if (argc != 2 && argc != 4) {
		fputs("usage: dicomsortd-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n",
		      stderr);
		return 1;
	}
	if (conf_dir == NULL || conf_dir[0] == '\0')
		conf_dir = GENERATOR_CONF_DIR;
	log = log_stream();
	/* Never a failed boot for a configuration: problems are logged. */
	generator_run(conf_dir, argv[1], log);
	if (log != stderr)
		fclose(log);
	return 0;
}
