/*
 * dicomsort.c - the batch command: a drop-in, faster replacement for the
 * original Python sorting tool (same flags, same tree), on top of pipeline.
 *
 * main() only wires things: parse flags, collect the input files, run them
 * through pipeline_file() on worker threads, then report.
 */
#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dicomsort/config.h"
#include "dicomsort/correlation.h"
#include "dicomsort/dicom.h"
#include "dicomsort/forward.h"
#include "dicomsort/fsutil.h"
#include "dicomsort/log.h"
#include "dicomsort/pipeline.h"

enum exit_code { EXIT_ALL_FINE = 0, EXIT_SOME_REJECTED = 1, EXIT_USAGE = 2 };

enum file_status { FILE_PENDING, FILE_SKIPPED, FILE_DONE };

/* What the report needs of a pipeline_result (which is kilobytes, mostly
 * room for the longest path): memory stays flat over 100,000s of files. */
struct outcome {
	enum pipeline_status status;
	char *dest;		/* only with --json */
	char *reason;		/* rejected or failed */
	char *unmapped_id;	/* the table lacked this PatientID */
};

/* One per input file, kept to the end for the report: no more than a
 * path and what happened (a 200,000-file --json run stays < 64 MiB). */
struct input_file {
	char *path;
	unsigned rel_off;	/* path + rel_off: relative to --dicomin */
	enum file_status status;
	struct outcome result;	/* when FILE_DONE */
};

struct options {
	const char *dicomin;
	const char *dicomout;
	const char *table_path;
	const char *layout;
	const char *filename;
	const char *missing_log;
	bool anonymize, move, dry_run, json, quiet;
	long jobs;
	const char *profile;		/* NULL: from --anonymize/--ID_correlation */
	const char *secret_path;
	const char *unknown_id;
	const char *pseudonym_prefix;
	const char *patient_name;
	long max_shift_days;
	unsigned deid_options;
	bool allow_burned_in;
	bool keep_unlisted;
	const char *safe_private[64];	/* NULL-terminated */
	size_t safe_private_count;
	const char *forward;		/* --forward NAME */
	const char *config_path;	/* -c CONF: where NAME is */
	long forward_timeout_s;
};

struct run {
	struct input_file *files;
	size_t count;
	struct pipeline *pipeline;
	bool keep_dest;		/* --json lists each destination */
	struct forward *forward;	/* --forward: queues what is stored */
	atomic_size_t queue_failed;
	atomic_size_t next;
	atomic_size_t done;
	long staged_delay_ms;	/* DICOMSORT_TEST_DELAY=staged:MS */
};

struct tally {
	size_t stored, duplicates, skipped, rejected, failed;
};

static const char usage_text[] =
"usage: dicomsort --dicomin DIR --dicomout DIR [--anonymize]\n"
"                 [--ID_correlation FILE] [options]\n"
"\n"
"Sort DICOM files into DIR/{PatientID}/{StudyDate}/{SeriesNumber}_{SeriesDescription}/\n"
"\n"
"  --dicomin DIR          folder of unsorted files (walked recursively)\n"
"  --dicomout DIR         root of the sorted tree (created if missing)\n"
"  --anonymize            PatientName -> ANONYMIZED, PatientBirthDate emptied\n"
"  --ID_correlation FILE  replace PatientID by the table's new ID\n"
"                         (implies --anonymize, as in the original tool)\n"
"  --layout TMPL          folder template, {Keyword} for any DICOM keyword\n"
"  --filename TMPL        file name template, e.g. '{SOPInstanceUID}.dcm'\n"
"                         (default: keep the source name, add _1, _2 on clashes;\n"
"                         basic: {SOPInstanceUID}.dcm; '' always keeps it)\n"
"  --jobs N               worker threads (default: all cores; for a\n"
"                         --move that only renames, one that reads and\n"
"                         one that renames)\n"
"  --move                 delete each source once its copy is durable\n"
"  --dry-run              show what would be done, write nothing\n"
"  --json                 print a machine-readable summary on stdout\n"
"  --quiet                print only errors\n"
"  --missing-ids-log PATH where unmapped PatientIDs go, mode 0600\n"
"                         (default: ./missing_patient_ids.log)\n"
"  --forward NAME -c CONF send every file stored (or found stored) on to the\n"
"                         destination NAME of dicomsortd.conf CONF, through\n"
"                         the outbox in DIR/.dicomsortd-state (as the daemon)\n"
"  --forward-timeout S    wait at most S s for the peer (default 600); what\n"
"                         is left stays queued for the next run (exit 1)\n"
"\n"
"De-identification (see README):\n"
"  --profile none|seed|basic  seed = --anonymize; basic = DICOM PS3.15 Basic\n"
"                         Application Level Confidentiality Profile\n"
"  --secret FILE          site secret for pseudonyms (mode 0600; basic needs it)\n"
"  --retain-safe-private --retain-uids --retain-device-identity\n"
"  --retain-institution-identity --retain-patient-characteristics\n"
"  --retain-long-full-dates --retain-long-modified-dates --clean-descriptors\n"
"  --clean-structured-content --clean-graphics   the PS3.15 options\n"
"  --safe-private CREATOR:gggg,xxee   a private element Retain Safe Private keeps\n"
"  --unknown-id keep|pseudonymize|reject  PatientIDs the table lacks\n"
"                         (default: keep, pseudonymize for basic)\n"
"  --pseudonym-prefix P   prefix of pseudonymous IDs (default ANON)\n"
"  --patient-name NAME    PatientName under basic (default: the new PatientID)\n"
"  --max-date-shift-days N  modified dates move back 1..N days (default 365)\n"
"  --allow-burned-in      store objects that may carry burned-in text\n"
"  --unlisted remove|keep  basic: text attributes no row of Table E.1-1\n"
"                         names are emptied or removed (default), or kept\n"
"  --help, --version\n"
"\n"
"Exit status: 0 all fine, 1 some inputs rejected (or, with --forward, not\n"
"delivered or refused by the peer), 2 usage or setup error.\n"
"\n"
"Under every profile, stderr, --json and the missing-IDs log name sources by\n"
"the paths given to --dicomin and hold original PatientIDs: they are the\n"
"operator's own records, not part of a de-identified export.\n";

static void usage_error(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));

static void usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "dicomsort: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'dicomsort --help'.\n");
	exit(EXIT_USAGE);
}

static long parse_number(const char *arg, const char *flag, long min, long max)
{
	char *end;
	long n;

	errno = 0;
	n = strtol(arg, &end, 10);
	if (errno != 0 || *end != '\0' || n < min || n > max)
		usage_error("%s wants a number from %ld to %ld, not '%s'", flag,
			    min, max, arg);
	return n;
}

static void parse_args(int argc, char **argv, struct options *o)
{
	enum { OPT_LAYOUT = 256, OPT_FILENAME, OPT_JOBS, OPT_MOVE, OPT_DRY_RUN,
	       OPT_JSON, OPT_QUIET, OPT_MISSING, OPT_HELP, OPT_VERSION,
	       OPT_IN, OPT_OUT, OPT_ANON, OPT_TABLE, OPT_PROFILE, OPT_SECRET,
	       OPT_UNKNOWN_ID, OPT_PREFIX, OPT_PATIENT_NAME, OPT_SHIFT,
	       OPT_BURNED_IN, OPT_SAFE_PRIVATE, OPT_UNLISTED, OPT_FORWARD,
	       OPT_FORWARD_TIMEOUT, OPT_DEID_OPTION };
	static const struct option longopts[] = {
		{ "dicomin", required_argument, NULL, OPT_IN },
		{ "dicomout", required_argument, NULL, OPT_OUT },
		{ "anonymize", no_argument, NULL, OPT_ANON },
		{ "ID_correlation", required_argument, NULL, OPT_TABLE },
		{ "layout", required_argument, NULL, OPT_LAYOUT },
		{ "filename", required_argument, NULL, OPT_FILENAME },
		{ "jobs", required_argument, NULL, OPT_JOBS },
		{ "move", no_argument, NULL, OPT_MOVE },
		{ "dry-run", no_argument, NULL, OPT_DRY_RUN },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "quiet", no_argument, NULL, OPT_QUIET },
		{ "missing-ids-log", required_argument, NULL, OPT_MISSING },
		{ "profile", required_argument, NULL, OPT_PROFILE },
		{ "secret", required_argument, NULL, OPT_SECRET },
		{ "unknown-id", required_argument, NULL, OPT_UNKNOWN_ID },
		{ "pseudonym-prefix", required_argument, NULL, OPT_PREFIX },
		{ "patient-name", required_argument, NULL, OPT_PATIENT_NAME },
		{ "max-date-shift-days", required_argument, NULL, OPT_SHIFT },
		{ "allow-burned-in", no_argument, NULL, OPT_BURNED_IN },
		{ "safe-private", required_argument, NULL, OPT_SAFE_PRIVATE },
		{ "unlisted", required_argument, NULL, OPT_UNLISTED },
		{ "forward", required_argument, NULL, OPT_FORWARD },
		{ "forward-timeout", required_argument, NULL, OPT_FORWARD_TIMEOUT },
		{ "config", required_argument, NULL, 'c' },
		/* One flag per PS3.15 option, in deid_option_name() order. */
		{ "retain-safe-private", no_argument, NULL, OPT_DEID_OPTION + 0 },
		{ "retain-uids", no_argument, NULL, OPT_DEID_OPTION + 1 },
		{ "retain-device-identity", no_argument, NULL, OPT_DEID_OPTION + 2 },
		{ "retain-institution-identity", no_argument, NULL, OPT_DEID_OPTION + 3 },
		{ "retain-patient-characteristics", no_argument, NULL, OPT_DEID_OPTION + 4 },
		{ "retain-long-full-dates", no_argument, NULL, OPT_DEID_OPTION + 5 },
		{ "retain-long-modified-dates", no_argument, NULL, OPT_DEID_OPTION + 6 },
		{ "clean-descriptors", no_argument, NULL, OPT_DEID_OPTION + 7 },
		{ "clean-structured-content", no_argument, NULL, OPT_DEID_OPTION + 8 },
		{ "clean-graphics", no_argument, NULL, OPT_DEID_OPTION + 9 },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->config_path = optarg; break;
		case OPT_FORWARD: o->forward = optarg; break;
		case OPT_FORWARD_TIMEOUT: o->forward_timeout_s = parse_number(
					optarg, "--forward-timeout", 0, 86400 * 7); break;
		case OPT_IN: o->dicomin = optarg; break;
		case OPT_OUT: o->dicomout = optarg; break;
		case OPT_ANON: o->anonymize = true; break;
		case OPT_TABLE: o->table_path = optarg; break;
		case OPT_LAYOUT: o->layout = optarg; break;
		case OPT_FILENAME: o->filename = optarg; break;
		case OPT_JOBS: o->jobs = parse_number(optarg, "--jobs", 1, 1024); break;
		case OPT_MOVE: o->move = true; break;
		case OPT_DRY_RUN: o->dry_run = true; break;
		case OPT_JSON: o->json = true; break;
		case OPT_QUIET: o->quiet = true; break;
		case OPT_MISSING: o->missing_log = optarg; break;
		case OPT_PROFILE: o->profile = optarg; break;
		case OPT_SECRET: o->secret_path = optarg; break;
		case OPT_UNKNOWN_ID: o->unknown_id = optarg; break;
		case OPT_PREFIX: o->pseudonym_prefix = optarg; break;
		case OPT_PATIENT_NAME: o->patient_name = optarg; break;
		case OPT_SHIFT: o->max_shift_days = parse_number(optarg,
					"--max-date-shift-days", 1, 36500); break;
		case OPT_BURNED_IN: o->allow_burned_in = true; break;
		case OPT_UNLISTED:
			if (strcmp(optarg, "keep") != 0 && strcmp(optarg, "remove") != 0)
				usage_error("--unlisted wants remove or keep, not '%s'",
					    optarg);
			o->keep_unlisted = strcmp(optarg, "keep") == 0;
			break;
		case OPT_SAFE_PRIVATE:
			if (o->safe_private_count + 1 >= 64)
				usage_error("%s", "too many --safe-private");
			o->safe_private[o->safe_private_count++] = optarg;
			break;
		case OPT_HELP: fputs(usage_text, stdout); exit(EXIT_ALL_FINE);
		case OPT_VERSION:
			printf("dicomsort %s\n", DICOMSORT_VERSION);
			exit(EXIT_ALL_FINE);
		case ':': usage_error("%s needs a value", argv[optind - 1]); break;
		default:
			if (c >= OPT_DEID_OPTION && c < OPT_DEID_OPTION + DEID_OPTION_COUNT) {
				o->deid_options |= 1u << (c - OPT_DEID_OPTION);
				break;
			}
			usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (o->dicomin == NULL || o->dicomout == NULL)
		usage_error("%s", "--dicomin and --dicomout are required");
	if ((o->forward == NULL) != (o->config_path == NULL))
		usage_error("%s", "--forward NAME and -c CONF go together");
	if (o->forward != NULL && o->dry_run)
		usage_error("%s", "--forward sends nothing under --dry-run");
}

/* ---- collecting the input ---- */

/* The original tool skipped these without trying to read them. */
static bool has_image_extension(const char *name)
{
	static const char *const exts[] = { ".png", ".jpeg", ".jpg", ".gif", ".bmp" };
	size_t len = strlen(name);

	for (size_t i = 0; i < sizeof(exts) / sizeof(*exts); i++) {
		size_t el = strlen(exts[i]);
		if (len >= el && strcasecmp(name + len - el, exts[i]) == 0)
			return true;
	}
	return false;
}

/* A path on stderr, one line whatever its bytes: control characters and
 * backslashes escaped as \n, \t, \\ or \xHH, so a file named
 * "a\ndicomsort: b: ..." cannot forge a report line. */
static void print_path(FILE *out, const char *path)
{
	for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
		if (*p == '\\')
			fputs("\\\\", out);
		else if (*p == '\n')
			fputs("\\n", out);
		else if (*p == '\t')
			fputs("\\t", out);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(out, "\\x%02x", *p);
		else
			fputc(*p, out);
	}
}

static int compare_names(const FTSENT **a, const FTSENT **b)
{
	return strcmp((*a)->fts_name, (*b)->fts_name);
}

static void add_file(struct run *r, size_t *cap, const char *path,
		     const char *name, size_t inlen)
{
	struct input_file *f;

	if (r->count == *cap) {
		*cap = *cap ? *cap * 2 : 1024;
		r->files = realloc(r->files, *cap * sizeof(*r->files));
		if (r->files == NULL) {
			perror("dicomsort");
			exit(EXIT_USAGE);
		}
	}
	f = &r->files[r->count++];
	memset(f, 0, sizeof(*f));
	f->path = strdup(path);
	f->rel_off = (unsigned)(inlen + (path[inlen] == '/'));
	if (f->path == NULL) {
		perror("dicomsort");
		exit(EXIT_USAGE);
	}
	if (has_image_extension(name))
		f->status = FILE_SKIPPED;
}

/* A file found: under recover (--move), a claim a --move killed midway
 * left (a source renamed to a private name before its place) gets its
 * name back first and is sorted again like the rest (identical output:
 * a duplicate) - fsutil_recover_claims() in the same walk. */
static void found(struct run *r, size_t *cap, const FTSENT *e, size_t inlen,
		  bool recover)
{
	char path[PATH_MAX];
	const char *slash;

	if (!recover || strncmp(e->fts_name, FSUTIL_CLAIM_PREFIX,
				strlen(FSUTIL_CLAIM_PREFIX)) != 0 ||
	    fsutil_recover_claim(e->fts_path, path, sizeof(path)) != 1) {
		add_file(r, cap, e->fts_path, e->fts_name, inlen);
		return;
	}
	slash = strrchr(path, '/');
	add_file(r, cap, path, slash == NULL ? path : slash + 1, inlen);
}

/* Everything below dicomin that is not a directory: regular files, but also
 * symlinks and FIFOs, so each gets a defined outcome. The output tree is
 * left out when it lies inside the input. */
static int collect(struct run *r, const char *dicomin, const char *dicomout,
		   bool recover)
{
	char *roots[] = { (char *)dicomin, NULL };
	struct stat out_st;
	bool have_out = stat(dicomout, &out_st) == 0;
	size_t cap = 0;
	FTS *fts;
	FTSENT *e;

	/* FTS_NOSTAT: files are opened (and looked at) by the pipeline;
	 * folders are still stat'ed, into fts_dev/fts_ino (fts_statp is
	 * NULL under FTS_NOSTAT). */
	fts = fts_open(roots, FTS_PHYSICAL | FTS_NOCHDIR | FTS_NOSTAT,
		       compare_names);
	if (fts == NULL)
		return -1;
	while ((e = fts_read(fts)) != NULL) {
		switch (e->fts_info) {
		case FTS_D:
			if (have_out && e->fts_level > 0 &&
			    e->fts_ino == out_st.st_ino &&
			    e->fts_dev == out_st.st_dev)
				fts_set(fts, e, FTS_SKIP);
			break;
		case FTS_DP:
			break;
		case FTS_DNR:
		case FTS_ERR:
			if (e->fts_level == 0) {
				errno = e->fts_errno;
				fts_close(fts);
				return -1;
			}
			fputs("dicomsort: ", stderr);
			print_path(stderr, e->fts_path);
			fprintf(stderr, ": %s\n", strerror(e->fts_errno));
			break;
		default:
			found(r, &cap, e, strlen(dicomin), recover);
		}
	}
	fts_close(fts);
	return 0;
}

/* ---- processing ---- */

/*
 * --forward: where an output became durable (or an identical one was
 * found), before the source may go, the file is queued in the outbox.
 * A duplicate is queued too: a run killed before its queue was made
 * finds its outputs as duplicates, and the peer takes a resend as the
 * same instance (SOPInstanceUID).
 */
static void queue_stored(void *ctx, const struct pipeline_result *res,
			 bool published)
{
	struct run *r = ctx;
	struct error err = ERROR_INIT;

	if (!published && res->status != PIPELINE_DUPLICATE)
		return;
	if (forward_queue(r->forward, res->dest, &err) == -1) {
		fprintf(stderr, "dicomsort: %s: not queued for forwarding: %s\n",
			res->dest, err.msg);
		atomic_fetch_add(&r->queue_failed, 1);
	}
}

/* What the report keeps of a file's result. */
static void record(struct run *r, struct input_file *f,
		   struct pipeline_result *res)
{
	struct outcome *o = &f->result;

	/* --move: stored, but the source stays; a later run finds the
	 * output and removes it. */
	if (res->dispose_failed) {
		res->status = PIPELINE_FAILED;
		snprintf(res->err.msg, sizeof(res->err.msg),
			 res->source_changed ?
			 "stored, but the source changed after it was read "
			 "and stays: %.400s" :
			 "stored, but the source stays: %.400s",
			 res->dispose_err.msg);
	}
	o->status = res->status;
	if (r->keep_dest && (res->status == PIPELINE_STORED ||
			     res->status == PIPELINE_DUPLICATE))
		o->dest = strdup(res->dest);
	if (res->status == PIPELINE_REJECTED || res->status == PIPELINE_FAILED)
		o->reason = strdup(res->err.msg);
	else if (res->warning != NULL)	/* stored as it came */
		o->reason = strdup(res->warning);
	if (res->deid.id_unmapped)
		o->unmapped_id = strdup(res->deid.original_id);
	f->status = FILE_DONE;
}

static void *worker(void *arg)
{
	struct run *r = arg;
	size_t i;

	while ((i = atomic_fetch_add(&r->next, 1)) < r->count) {
		struct input_file *f = &r->files[i];

		if (f->status == FILE_PENDING) {
			struct pipeline_result res;
			struct pipeline_hooks hooks = {
				.after_publish = queue_stored, .ctx = r };

			pipeline_file_hooked(r->pipeline, f->path,
					     f->path + f->rel_off,
					     r->forward ? &hooks : NULL, &res);
			record(r, f, &res);
		}
		atomic_fetch_add(&r->done, 1);
	}
	return NULL;
}

/*
 * --move that renames every file (see default_jobs()): two threads, one
 * stage each. The reader opens, leases, reads and parses each file and
 * finishes itself whatever is not renamed; the renamer takes the staged
 * ones in input order and makes their folders, claims and places. Each
 * rename then waits for no other rename, and the reading of the next
 * files overlaps it. A ring of STAGE_DEPTH files bounds those open
 * (leased) at once; a sleeping side is woken only once STAGE_BATCH files
 * wait for it (or room for them), not for each (a wake-up costs more
 * than a rename).
 */
#define STAGE_DEPTH 64
#define STAGE_BATCH 16

struct stage_slot {
	size_t index;				/* into run.files */
	struct pipeline_staged *staged;
	struct pipeline_result res;
};

struct stages {
	struct run *run;
	pthread_mutex_t lock;
	pthread_cond_t ready;		/* for the renamer: files, or the end */
	pthread_cond_t room;		/* for the reader: free slots */
	size_t head, tail;		/* taken < head <= tail: filled */
	bool reader_done;
	bool renamer_waits, reader_waits;
	struct stage_slot slots[STAGE_DEPTH];
};

static void *renamer(void *arg)
{
	struct stages *q = arg;
	struct run *r = q->run;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		struct stage_slot *s;

		while (q->head == q->tail && !q->reader_done) {
			q->renamer_waits = true;
			pthread_cond_wait(&q->ready, &q->lock);
		}
		if (q->head == q->tail)
			break;
		s = &q->slots[q->head % STAGE_DEPTH];
		pthread_mutex_unlock(&q->lock);
		if (r->staged_delay_ms > 0)
			nanosleep(&(struct timespec){
				r->staged_delay_ms / 1000,
				r->staged_delay_ms % 1000 * 1000000 }, NULL);
		pipeline_finish_staged(s->staged, &s->res);
		record(r, &r->files[s->index], &s->res);
		atomic_fetch_add(&r->done, 1);
		pthread_mutex_lock(&q->lock);
		q->head++;
		if (q->reader_waits &&
		    q->tail - q->head <= STAGE_DEPTH - STAGE_BATCH) {
			q->reader_waits = false;
			pthread_cond_signal(&q->room);
		}
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

/* The renamer is woken with a batch waiting, or at the end. */
static void wake_renamer(struct stages *q)
{
	if (q->renamer_waits &&
	    (q->tail - q->head >= STAGE_BATCH || q->reader_done)) {
		q->renamer_waits = false;
		pthread_cond_signal(&q->ready);
	}
}

/* The next free slot, waiting for room. */
static struct stage_slot *free_slot(struct stages *q)
{
	size_t tail;

	pthread_mutex_lock(&q->lock);
	while (q->tail - q->head == STAGE_DEPTH) {
		/* Full: the renamer is at work (it sleeps only when
		 * nothing is left, and is woken with STAGE_BATCH). */
		q->reader_waits = true;
		pthread_cond_wait(&q->room, &q->lock);
	}
	tail = q->tail;
	pthread_mutex_unlock(&q->lock);
	return &q->slots[tail % STAGE_DEPTH];
}

static void reader(struct stages *q)
{
	struct run *r = q->run;

	for (size_t i = 0; i < r->count; i++) {
		struct input_file *f = &r->files[i];
		struct stage_slot *s;
		bool staged;

		if (f->status != FILE_PENDING) {
			atomic_fetch_add(&r->done, 1);
			continue;
		}
		s = free_slot(q);
		pipeline_file_staged(r->pipeline, f->path, f->path + f->rel_off,
				     &s->res, s->staged, &staged);
		if (!staged) {
			record(r, f, &s->res);
			atomic_fetch_add(&r->done, 1);
			continue;
		}
		s->index = i;
		pthread_mutex_lock(&q->lock);
		q->tail++;
		wake_renamer(q);
		pthread_mutex_unlock(&q->lock);
	}
	pthread_mutex_lock(&q->lock);
	q->reader_done = true;
	wake_renamer(q);
	pthread_mutex_unlock(&q->lock);
}

static void free_stages(struct stages *q)
{
	for (size_t i = 0; i < STAGE_DEPTH; i++)
		pipeline_staged_free(q->slots[i].staged);
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->ready);
	pthread_cond_destroy(&q->room);
	free(q);
}

static void *run_stages(void *arg)
{
	struct run *r = arg;
	struct stages *q = calloc(1, sizeof(*q));
	pthread_t thread;
	bool ok = q != NULL;

	if (q == NULL)
		return worker(r);
	q->run = r;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->ready, NULL);
	pthread_cond_init(&q->room, NULL);
	for (size_t i = 0; i < STAGE_DEPTH; i++)
		ok = ok && (q->slots[i].staged = pipeline_staged_new()) != NULL;
	if (!ok || pthread_create(&thread, NULL, renamer, q) != 0) {
		free_stages(q);
		return worker(r);
	}
	reader(q);
	pthread_join(thread, NULL);
	free_stages(q);
	return NULL;
}

static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void draw_progress(size_t done, size_t total, double started)
{
	int width = 40;
	int filled = total ? (int)((double)done / (double)total * width) : width;
	double rate = (double)done / (now_seconds() - started + 1e-9);

	fprintf(stderr, "\rProcessing [%.*s%*s] %zu/%zu %.0f files/s", filled,
		"########################################", width - filled, "",
		done, total, rate);
}

/* staged: one thread running the two stages (see reader()), which
 * start one more. */
static void run_workers(struct run *r, long jobs, bool staged, bool progress,
			double started)
{
	pthread_t *threads = calloc((size_t)jobs, sizeof(*threads));
	void *(*fn)(void *) = staged ? run_stages : worker;
	long started_threads = 0;

	if (threads == NULL)
		abort();
	for (long i = 0; i < jobs; i++)
		if (pthread_create(&threads[i], NULL, fn, r) == 0)
			started_threads++;
	if (started_threads == 0)
		fn(r);
	while (progress && atomic_load(&r->done) < r->count) {
		draw_progress(atomic_load(&r->done), r->count, started);
		nanosleep(&(struct timespec){ 0, 100 * 1000 * 1000 }, NULL);
	}
	for (long i = 0; i < started_threads; i++)
		pthread_join(threads[i], NULL);
	if (progress) {
		draw_progress(r->count, r->count, started);
		fputc('\n', stderr);
	}
	free(threads);
}

/* ---- reporting ---- */

static const char *status_name(const struct input_file *f)
{
	if (f->status == FILE_SKIPPED)
		return "skipped";
	switch (f->result.status) {
	case PIPELINE_STORED: return "stored";
	case PIPELINE_DUPLICATE: return "duplicate";
	case PIPELINE_REJECTED: return "rejected";
	case PIPELINE_HELD: return "rejected";
	case PIPELINE_FAILED: return "failed";
	}
	return "failed";
}

static void tally_files(const struct run *r, struct tally *t)
{
	memset(t, 0, sizeof(*t));
	for (size_t i = 0; i < r->count; i++) {
		const struct input_file *f = &r->files[i];

		if (f->status == FILE_SKIPPED) {
			t->skipped++;
			continue;
		}
		switch (f->result.status) {
		case PIPELINE_STORED: t->stored++; break;
		case PIPELINE_DUPLICATE: t->duplicates++; break;
		case PIPELINE_REJECTED: t->rejected++; break;
		case PIPELINE_HELD: t->rejected++; break;
		case PIPELINE_FAILED: t->failed++; break;
		}
	}
}

/* Failures always; warnings about stored files (a reason beside a
 * success) unless quiet. */
static void report_problems(const struct run *r, bool quiet)
{
	for (size_t i = 0; i < r->count; i++) {
		const struct input_file *f = &r->files[i];
		bool bad;

		if (f->status != FILE_DONE)
			continue;
		bad = f->result.status == PIPELINE_REJECTED ||
		      f->result.status == PIPELINE_FAILED;
		if (bad || (!quiet && f->result.reason != NULL)) {
			fputs("dicomsort: ", stderr);
			print_path(stderr, f->path);
			fprintf(stderr, ": %s%s\n", bad ? "" : "warning: ",
				f->result.reason ? f->result.reason :
				"out of memory");
		}
	}
}

/* Length of the valid UTF-8 sequence at s, or 0 if it is not one. */
static size_t utf8_sequence(const unsigned char *s)
{
	size_t n = *s >= 0xf0 && *s <= 0xf4 ? 4 : *s >= 0xe0 ? 3 :
		   *s >= 0xc2 && *s < 0xe0 ? 2 : 0;

	if (*s >= 0xf5)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

static void json_string(FILE *out, const char *s)
{
	if (s == NULL) {
		fputs("null", out);
		return;
	}
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		size_t n;

		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(out, "\\u%04x", *p);
		else if (*p < 0x80)
			fputc(*p, out);
		else if ((n = utf8_sequence(p)) > 0) {
			fwrite(p, 1, n, out);
			p += n - 1;
		} else
			fputs("\\ufffd", out);
	}
	fputc('"', out);
}

static void print_json(const struct run *r, const struct tally *t,
		       double elapsed, size_t unmapped,
		       const struct forward_stat *fwd)
{
	fprintf(stdout, "{\"stored\":%zu,\"duplicates\":%zu,\"skipped\":%zu,"
		"\"rejected\":%zu,\"failed\":%zu,\"elapsed_s\":%.3f,"
		"\"files_per_s\":%.1f,\"unmapped_ids\":%zu,\"files\":[",
		t->stored, t->duplicates, t->skipped, t->rejected, t->failed,
		elapsed, (double)r->count / (elapsed > 0 ? elapsed : 1e-9), unmapped);
	for (size_t i = 0; i < r->count; i++) {
		const struct input_file *f = &r->files[i];
		const struct outcome *res = &f->result;
		bool ok = f->status == FILE_DONE &&
			  (res->status == PIPELINE_STORED ||
			   res->status == PIPELINE_DUPLICATE);

		fputs(i ? ",{\"source\":" : "{\"source\":", stdout);
		json_string(stdout, f->path);
		fprintf(stdout, ",\"status\":\"%s\",\"dest\":", status_name(f));
		json_string(stdout, ok ? res->dest : NULL);
		fputs(",\"reason\":", stdout);
		json_string(stdout, res->reason);
		fputc('}', stdout);
	}
	fputs("]", stdout);
	if (fwd != NULL) {
		fputs(",\"forward\":[{\"name\":", stdout);
		json_string(stdout, fwd->name);
		fprintf(stdout, ",\"queued\":%zu,\"oldest_s\":%ld,"
			"\"forwarded\":%lu,\"rejected\":%lu,\"retries\":%lu}]",
			fwd->queued, fwd->oldest_s, fwd->forwarded,
			fwd->rejected, fwd->retries);
	}
	fputs("}\n", stdout);
}

static int compare_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The log lists original IDs: only its owner may read it, whatever the
 * umask, and an existing file of wider mode is narrowed first. */
static FILE *open_private(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		      0600);
	FILE *f;

	if (fd == -1)
		return NULL;
	if (fchmod(fd, 0600) == -1 || (f = fdopen(fd, "w")) == NULL) {
		int saved = errno;

		close(fd);
		errno = saved;
		return NULL;
	}
	return f;
}

/* The original wrote each unmapped PatientID once to this log. */
static size_t write_missing_ids(const struct run *r, const char *path, bool quiet)
{
	const char **ids = calloc(r->count + 1, sizeof(*ids));
	size_t n = 0, unique = 0;
	FILE *log;

	if (ids == NULL)
		abort();
	for (size_t i = 0; i < r->count; i++)
		if (r->files[i].result.unmapped_id)
			ids[n++] = r->files[i].result.unmapped_id;
	if (n == 0) {
		free(ids);
		return 0;
	}
	qsort(ids, n, sizeof(*ids), compare_strings);
	log = open_private(path);
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && strcmp(ids[i], ids[i - 1]) == 0)
			continue;
		unique++;
		if (log)
			fprintf(log, "%s\n", ids[i]);
	}
	if (log == NULL || fclose(log) != 0)
		fprintf(stderr, "dicomsort: cannot write %s: %s\n", path,
			strerror(errno));
	else if (!quiet)
		printf("Missing PatientIDs logged in '%s'.\n", path);
	free(ids);
	return unique;
}

static struct correlation *load_table(const char *path)
{
	struct error err = ERROR_INIT;
	struct correlation *table = NULL;

	if (path != NULL && correlation_load(&table, path, &err) == -1) {
		fprintf(stderr, "dicomsort: %s\n", err.msg);
		exit(EXIT_USAGE);
	}
	return table;
}

/* --profile wins; otherwise the original's flags: --anonymize, or a table
 * alone, mean seed. */
static enum deid_profile choose_profile(const struct options *o,
					const struct correlation *table)
{
	enum deid_profile p;

	if (o->profile == NULL)
		return o->anonymize || table ? DEID_SEED : DEID_NONE;
	if (deid_profile_from_name(o->profile, &p) == -1)
		usage_error("--profile wants none, seed or basic, not '%s'", o->profile);
	if (o->anonymize && p != DEID_SEED)
		usage_error("%s", "--anonymize is --profile seed; give only one");
	return p;
}

static enum deid_unknown_id choose_unknown_id(const struct options *o)
{
	enum deid_unknown_id policy = DEID_UNKNOWN_DEFAULT;

	if (o->unknown_id == NULL)
		return policy;
	if (deid_unknown_id_from_name(o->unknown_id, &policy) == -1 ||
	    policy == DEID_UNKNOWN_HOLD)
		usage_error("--unknown-id wants keep, pseudonymize or reject, "
			    "not '%s' (hold needs the daemon)", o->unknown_id);
	return policy;
}

static struct deid_secret *load_secret(const char *path)
{
	struct error err = ERROR_INIT;
	struct deid_secret *secret = NULL;

	if (path != NULL && deid_secret_load(&secret, path, &err) == -1) {
		fprintf(stderr, "dicomsort: %s\n", err.msg);
		exit(EXIT_USAGE);
	}
	return secret;
}

static struct pipeline *setup_pipeline(const struct options *o,
				   struct correlation *table,
				   const struct deid_secret *secret)
{
	struct error err = ERROR_INIT;
	struct pipeline_options io = {
		.output_dir = o->dicomout,
		.dir_template = o->layout,
		.name_template = o->filename,
		.deid = {
			.profile = choose_profile(o, table),
			.table = table,
			.options = o->deid_options,
			.secret = secret,
			.unknown_id = choose_unknown_id(o),
			.pseudonym_prefix = o->pseudonym_prefix,
			.patient_name = o->patient_name,
			.max_shift_days = o->max_shift_days,
			.safe_private = o->safe_private,
			.allow_burned_in = o->allow_burned_in,
			.keep_unlisted = o->keep_unlisted,
		},
		/* Copies need one sync at the end; a moved source goes only
		 * after its own copy is durable. */
		.sync = o->move ? PIPELINE_SYNC_DISPOSAL : PIPELINE_SYNC_NONE,
		.disposal = o->move ? PIPELINE_DELETE_SOURCE : PIPELINE_KEEP_SOURCE,
		/* Like mv: on one file system an unchanged file is renamed. */
		.rename_unchanged = o->move && o->forward == NULL,
		.dry_run = o->dry_run,
		/* main() ignores SIGIO: one fcntl less per leased file. */
		.sigio_ignored = true,
	};
	struct pipeline *pipeline;

	if (pipeline_new(&pipeline, &io, &err) == -1) {
		fprintf(stderr, "dicomsort: %s\n", err.msg);
		exit(EXIT_USAGE);
	}
	return pipeline;
}

/*
 * All cores, but one worker for a --move that renames every file as it is
 * (nothing to change, one file system): its work is the kernel's, two
 * renames per file, each under the lock of its folders - the input's
 * folder for the claim, both for the placing. A second worker waits on
 * those locks (spinning: rwsem_spin_on_owner) instead of working; one
 * took 25-30% less wall and CPU time (bench/PROFILE.md section 9). With
 * two cores or more that one worker is split in two stages (*staged,
 * reader()): one thread reads, another renames, and no rename waits for
 * another (section 15).
 * in: --dicomin's stat; --dicomout exists once the pipeline is set up.
 */
static long default_jobs(const struct options *o,
			 const struct correlation *table, const struct stat *in,
			 bool *staged)
{
	long cores = sysconf(_SC_NPROCESSORS_ONLN) > 0 ?
		     sysconf(_SC_NPROCESSORS_ONLN) : 1;
	struct stat out;

	*staged = false;
	if (o->move && !o->dry_run && o->forward == NULL && table == NULL &&
	    !o->anonymize && (o->profile == NULL ||
			      strcmp(o->profile, "none") == 0) &&
	    stat(o->dicomout, &out) == 0 && out.st_dev == in->st_dev) {
		*staged = cores > 1;
		return 1;
	}
	return cores;
}

/* DICOMSORT_TEST_DELAY=staged:MS, for tests only: the renamer waits MS
 * before each staged file (a window for a sender to act in). */
static long staged_test_delay(void)
{
	const char *v = getenv("DICOMSORT_TEST_DELAY");

	if (v == NULL || strncmp(v, "staged:", 7) != 0)
		return 0;
	return strtol(v + 7, NULL, 10);
}

/* ---- --forward ---- */

/* The destination from the daemon's configuration; the outbox goes
 * below --dicomout, the tree this run writes. */
static struct forward *start_forward(const struct options *o,
				     struct config *cfg)
{
	struct error err = ERROR_INIT;
	struct forward *f = NULL;

	if (config_load(cfg, o->config_path, &err) == -1) {
		fprintf(stderr, "dicomsort: %s\n", err.msg);
		exit(EXIT_USAGE);
	}
	if (config_forward_find(cfg, o->forward) == NULL) {
		fprintf(stderr, "dicomsort: %s: no destination named '%s' in "
			"'forward'\n", o->config_path, o->forward);
		config_release(cfg);
		exit(EXIT_USAGE);
	}
	free(cfg->output);
	cfg->output = strdup(o->dicomout);
	log_open("dicomsort", LOG_TARGET_STDERR, 0);
	if (cfg->output == NULL ||
	    forward_start(&f, cfg, o->forward, &err) == -1) {
		fprintf(stderr, "dicomsort: %s\n", err.msg);
		config_release(cfg);
		exit(EXIT_USAGE);
	}
	return f;
}

/* Wait (bounded) for the queue to drain; what is left stays in the
 * outbox for the next run. Returns the entries left plus those the
 * peer refused. */
static size_t finish_forward(const struct options *o, struct forward *f,
			     struct forward_stat *st)
{
	double deadline = now_seconds() + (double)o->forward_timeout_s;
	size_t left;

	while ((left = forward_queued(f)) > 0 && now_seconds() < deadline)
		nanosleep(&(struct timespec){ 0, 100 * 1000 * 1000 }, NULL);
	forward_stats(f, st, 1);
	if (forward_stop(f, 0) == 0)
		forward_free(f);
	if (left > 0 && !o->quiet)
		fprintf(stderr, "dicomsort: %zu files not yet delivered to %s; "
			"they stay queued in %s/.dicomsortd-state/outbox/%s for "
			"the next run\n", left, o->forward, o->dicomout,
			o->forward);
	if (st->rejected > 0 && !o->quiet)
		fprintf(stderr, "dicomsort: %s refused %lu files: see %s/"
			".dicomsortd-state/outbox/%s/rejected/\n", o->forward,
			st->rejected, o->dicomout, o->forward);
	return left + st->rejected;
}

int main(int argc, char **argv)
{
	struct options o = { .missing_log = "missing_patient_ids.log",
			     .forward_timeout_s = 600 };
	struct config cfg = { 0 };
	struct forward_stat fst = { 0 };
	size_t undelivered = 0;
	struct error err = ERROR_INIT;
	struct run r = { 0 };
	struct correlation *table;
	struct deid_secret *secret;
	struct tally t;
	struct stat st;
	double started, elapsed;
	size_t unmapped = 0;
	bool unsynced = false;
	bool staged = false;

	parse_args(argc, argv, &o);
	/* A broken read lease (a writer opening a file being moved) is
	 * signalled with SIGIO, whose default would end us; the break is
	 * looked for with F_GETLEASE (fsutil.h). Before any thread. */
	if (fsutil_ignore_sigio() == -1) {
		fprintf(stderr, "dicomsort: sigaction: %s\n", strerror(errno));
		return EXIT_USAGE;
	}
	if (stat(o.dicomin, &st) == -1 || !S_ISDIR(st.st_mode)) {
		fprintf(stderr, "dicomsort: --dicomin %s: not a folder\n", o.dicomin);
		return EXIT_USAGE;
	}
	if (dicom_init(&err) == -1) {
		fprintf(stderr, "dicomsort: %s\n", err.msg);
		return EXIT_USAGE;
	}
	table = load_table(o.table_path);
	secret = load_secret(o.secret_path);
	r.pipeline = setup_pipeline(&o, table, secret);
	if (o.jobs == 0)
		o.jobs = default_jobs(&o, table, &st, &staged);
	r.staged_delay_ms = staged ? staged_test_delay() : 0;
	r.keep_dest = o.json;
	if (o.forward != NULL)
		r.forward = start_forward(&o, &cfg);
	started = now_seconds();
	if (collect(&r, o.dicomin, o.dicomout, o.move && !o.dry_run) == -1) {
		fprintf(stderr, "dicomsort: %s: %s\n", o.dicomin, strerror(errno));
		return EXIT_USAGE;
	}
	run_workers(&r, o.jobs, staged, !o.quiet && !o.json && isatty(STDERR_FILENO),
		    started);
	/* Not durable is not done: the sources are still there, so say so
	 * in the exit status and a later run completes the job. */
	if (!o.dry_run && pipeline_sync_all(r.pipeline, &err) == -1) {
		fprintf(stderr, "dicomsort: output may not be durable: %s\n",
			err.msg);
		unsynced = true;
	}
	if (r.forward != NULL)
		undelivered = finish_forward(&o, r.forward, &fst) +
			      atomic_load(&r.queue_failed);
	elapsed = now_seconds() - started;
	report_problems(&r, o.quiet);
	if (table != NULL && !o.dry_run)
		unmapped = write_missing_ids(&r, o.missing_log, o.quiet || o.json);
	tally_files(&r, &t);
	if (o.json)
		print_json(&r, &t, elapsed, unmapped,
			   o.forward != NULL ? &fst : NULL);
	else if (!o.quiet)
		printf("stored %zu, duplicates %zu, skipped %zu, rejected %zu, "
		       "failed %zu in %.2f s (%.0f files/s)\n", t.stored,
		       t.duplicates, t.skipped, t.rejected, t.failed, elapsed,
		       (double)r.count / (elapsed > 0 ? elapsed : 1e-9));
	if (o.forward != NULL && !o.quiet && !o.json)
		printf("forward %s: delivered %lu, refused %lu, left %zu\n",
		       o.forward, fst.forwarded, fst.rejected, fst.queued);
	for (size_t i = 0; i < r.count; i++) {
		free(r.files[i].path);
		free(r.files[i].result.dest);
		free(r.files[i].result.reason);
		free(r.files[i].result.unmapped_id);
	}
	free(r.files);
	pipeline_free(r.pipeline);
	correlation_unref(table);
	deid_secret_free(secret);
	config_release(&cfg);
	return t.rejected || t.failed || unsynced || undelivered ?
	       EXIT_SOME_REJECTED : EXIT_ALL_FINE;
}
