/*
 * dicomsortd.c - the drop-folder daemon's main(): flags, config, then the
 * loop in daemon.c. Runs in the foreground, as systemd wants it.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dicomsort/checkconf.h"
#include "dicomsort/config.h"
#include "dicomsort/daemon.h"
#include "dicomsort/dryrun.h"
#include "dicomsort/log.h"
#include "dicomsort/ops.h"

static const char usage_text[] =
"usage: dicomsortd [-c FILE] [--check-config [--user USER] [--probe]]\n"
"       dicomsortd --check-config -c FILE --sample DIR [--json]\n"
"                  [--log-target auto|journal|stderr] [--debug] [--help] [--version]\n"
"       dicomsortd status -c FILE [--json]\n"
"       dicomsortd quarantine list -c FILE [--json]\n"
"       dicomsortd quarantine requeue -c FILE [--reason TEXT] [--all] [PATH...]\n"
"\n"
"Watch a drop folder and sort every finished DICOM file into a tree.\n"
"  -c, --config FILE   configuration (default " CONFIG_DEFAULT_PATH ")\n"
"  --check-config      check what a start will meet and exit: 0 no errors\n"
"                      (warnings may be printed), 2 errors. Run as root,\n"
"                      folders are checked as the unit's User=\n"
"  --user USER         with --check-config: check as USER instead\n"
"  --probe             with --check-config: also C-ECHO (DICOM) or HTTP\n"
"                      OPTIONS (DICOMweb) each forward destination\n"
"  --sample DIR        with --check-config: print what the daemon would do\n"
"                      with each file below DIR (destination, quarantine or\n"
"                      hold reason, ignored, values the profile changes);\n"
"                      writes nothing\n"
"  --json              with --sample: one JSON document\n"
"  --log-target T      auto (journald under systemd, else stderr), journal, stderr\n"
"  --debug             also log debug messages\n"
"\n"
"Signals: HUP reloads the correlation table; TERM/INT finish files in\n"
"flight and exit.\n";

struct flags {
	const char *config_path;
	const char *log_target;
	const char *check_user;
	const char *sample;
	int json;
	int check_only;
	int probe;
	int debug;
};

static void parse_flags(int argc, char **argv, struct flags *f)
{
	enum { OPT_CHECK = 256, OPT_USER, OPT_LOG, OPT_DEBUG, OPT_HELP,
	       OPT_VERSION, OPT_PROBE, OPT_SAMPLE, OPT_JSON };
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, OPT_CHECK },
		{ "user", required_argument, NULL, OPT_USER },
		{ "probe", no_argument, NULL, OPT_PROBE },
		{ "sample", required_argument, NULL, OPT_SAMPLE },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "log-target", required_argument, NULL, OPT_LOG },
		{ "debug", no_argument, NULL, OPT_DEBUG },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': f->config_path = optarg; break;
		case OPT_CHECK: f->check_only = 1; break;
		case OPT_USER: f->check_user = optarg; break;
		case OPT_PROBE: f->probe = 1; break;
		case OPT_SAMPLE: f->sample = optarg; break;
		case OPT_JSON: f->json = 1; break;
		case OPT_LOG: f->log_target = optarg; break;
		case OPT_DEBUG: f->debug = 1; break;
		case OPT_HELP: fputs(usage_text, stdout); exit(0);
		case OPT_VERSION: printf("dicomsortd %s\n", DICOMSORT_VERSION); exit(0);
		default: fputs(usage_text, stderr); exit(2);
		}
	}
	if ((f->check_user != NULL || f->probe || f->sample != NULL) &&
	    !f->check_only) {
		fputs("dicomsortd: --user, --probe and --sample go with "
		      "--check-config\n", stderr);
		exit(2);
	}
	if ((f->json && f->sample == NULL) ||
	    (f->sample != NULL && (f->check_user != NULL || f->probe))) {
		fputs("dicomsortd: --json goes with --sample, which runs "
		      "alone (no --user, --probe)\n", stderr);
		exit(2);
	}
	if (optind < argc) {
		fprintf(stderr, "dicomsortd: unexpected argument '%s'\n", argv[optind]);
		exit(2);
	}
}

static int log_target_from_flag(const char *name, enum log_target *target)
{
	if (name == NULL)
		return 0;
	if (strcmp(name, "auto") == 0)
		*target = LOG_TARGET_AUTO;
	else if (strcmp(name, "journal") == 0)
		*target = LOG_TARGET_JOURNAL;
	else if (strcmp(name, "stderr") == 0)
		*target = LOG_TARGET_STDERR;
	else
		return -1;
	return 0;
}

/*
 * Before anything else: a SIGHUP (a reload sent the moment systemd forked
 * us) or a SIGTERM must wait for the loop's signalfd, never run the default
 * action and kill a daemon that is still reading its configuration.
 * Threads inherit the mask. --check-config gets the old mask back.
 */
static void block_signals_early(sigset_t *old)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, old);
}

int main(int argc, char **argv)
{
	struct flags f = { .config_path = CONFIG_DEFAULT_PATH };
	struct error err = ERROR_INIT;
	struct config cfg;
	sigset_t old_mask;
	int rc;

	block_signals_early(&old_mask);
	if (ops_is_command(argc, argv)) {
		sigprocmask(SIG_SETMASK, &old_mask, NULL);
		return ops_main(argc, argv);
	}
	parse_flags(argc, argv, &f);
	if (config_load(&cfg, f.config_path, &err) == -1) {
		/* The daemon's stderr may be a file: a time stamp, as on every
		 * record (log.c writes to stderr before log_open()). */
		if (f.check_only)
			fprintf(stderr, "dicomsortd: %s\n", err.msg);
		else
			log_msg(LOG_ERR, "cannot start: %s (a configuration "
				"error: exit status 2)", err.msg);
		return 2;
	}
	if (log_target_from_flag(f.log_target, &cfg.log_target) == -1) {
		fprintf(stderr, "dicomsortd: --log-target wants auto, journal or stderr\n");
		config_release(&cfg);
		return 2;
	}
	if (f.check_only && f.sample != NULL) {
		/* The dry run only: the folder checks write probe files. */
		sigprocmask(SIG_SETMASK, &old_mask, NULL);
		rc = dryrun_run(&cfg, f.sample, f.json);
		config_release(&cfg);
		return rc;
	}
	if (f.check_only) {
		sigprocmask(SIG_SETMASK, &old_mask, NULL);
		rc = checkconf_run(&cfg, f.check_user);
		if (f.probe && checkconf_probe(&cfg) != 0)
			rc = 2;
		config_release(&cfg);
		return rc;
	}
	log_open("dicomsortd", cfg.log_target, f.debug);
	rc = daemon_run(&cfg);
	config_release(&cfg);
	return rc;
}
