/*
 * create_ways: the file-system part of dicomsort's sort mode alone, to
 * compare ways of creating the outputs (bench/PROFILE.md section 10). For
 * each line "SRC-REL<TAB>DEST-DIR" of a corpus's .plan file (make_corpus.py),
 * THREADS threads each read the source in one pread and write it to
 * DST/DEST-DIR/<basename> as:
 *   0  an O_TMPFILE in the folder, linkat() of /proc/self/fd/N (dicomsort's)
 *   1  a named temp file (O_CREAT|O_EXCL), renameat2(RENAME_NOREPLACE)
 *   2  the final name directly, O_CREAT|O_EXCL (cp's; no crash guarantee)
 * then one syncfs() of DST. Each thread keeps the folders it made open
 * (the plans interleave series, so a last-folder cache would walk the path
 * again for most files): about 8 system calls per file, where dicomsort
 * makes 10.3 and cp -r 11.3. Not built by CMake (a bench tool):
 *
 *   cc -O2 -pthread -o create_ways bench/create_ways.c
 *   /usr/bin/time ./create_ways 0 2 CORPUS CORPUS.plan OUT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE	(1 << 20)
#define MAX_THREADS	16
#define MAX_REL		512	/* a plan's paths are short */
#define MAX_DIRS	256	/* folders kept open per thread */

struct item {
	char	src[MAX_REL];
	char	dir[MAX_REL];
	size_t	base;		/* offset of the basename in src */
};

struct run {
	struct item	*items;
	size_t		 n;
	atomic_size_t	 next;
	int		 way;
	int		 rootfd, srcfd;
};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* The folder DIR below the output root, made as needed, opened. */
static int mkdirs(int rootfd, const char *dir)
{
	char buf[PATH_MAX], *save;
	int fd = dup(rootfd);

	snprintf(buf, sizeof(buf), "%s", dir);
	for (char *p = strtok_r(buf, "/", &save); p != NULL;
	     p = strtok_r(NULL, "/", &save)) {
		int sub;

		if (mkdirat(fd, p, 0755) == -1 && errno != EEXIST)
			die("mkdirat");
		if ((sub = openat(fd, p, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
			die("openat folder");
		close(fd);
		fd = sub;
	}
	return fd;
}

static int create(struct run *r, int dirfd, const char *name, char *tmp,
		  size_t tmplen, unsigned *seq)
{
	int flags = O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;

	if (r->way == 0)
		return openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
	if (r->way == 1) {
		snprintf(tmp, tmplen, ".create_ways-%08x.tmp", (*seq)++);
		return openat(dirfd, tmp, flags, 0644);
	}
	return openat(dirfd, name, flags, 0644);
}

static void publish(struct run *r, int dirfd, int fd, const char *name,
		    const char *tmp)
{
	char proc[64];

	if (r->way == 0) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		if (linkat(AT_FDCWD, proc, dirfd, name, AT_SYMLINK_FOLLOW) == -1)
			die("linkat");
	} else if (r->way == 1 &&
		   renameat2(dirfd, tmp, dirfd, name, RENAME_NOREPLACE) == -1)
		die("renameat2");
}

struct dirs {
	const char	*path[MAX_DIRS];
	int		 fd[MAX_DIRS];
	int		 n;
};

/* The folder's descriptor, from this thread's cache or made and opened. */
static int folder(struct run *r, struct dirs *d, const char *dir)
{
	for (int i = 0; i < d->n; i++)
		if (strcmp(d->path[i], dir) == 0)
			return d->fd[i];
	if (d->n == MAX_DIRS) {
		fprintf(stderr, "create_ways: more than %d folders\n", MAX_DIRS);
		exit(1);
	}
	d->path[d->n] = dir;
	d->fd[d->n] = mkdirs(r->rootfd, dir);
	return d->fd[d->n++];
}

static void *worker(void *arg)
{
	static atomic_uint thread_no;
	struct run *r = arg;
	struct dirs *d = calloc(1, sizeof(*d));
	char *buf = malloc(MAX_FILE), tmp[64];
	unsigned seq = atomic_fetch_add(&thread_no, 1) * 100000000u;

	if (buf == NULL || d == NULL)
		die("malloc");
	for (size_t i; (i = atomic_fetch_add(&r->next, 1)) < r->n;) {
		struct item *it = &r->items[i];
		const char *name = it->src + it->base;
		ssize_t len;
		struct stat st;
		int in, out, dirfd;

		in = openat(r->srcfd, it->src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (in == -1 || fstat(in, &st) == -1)
			die(it->src);
		if ((len = pread(in, buf, MAX_FILE, 0)) == -1)
			die("pread");
		close(in);
		dirfd = folder(r, d, it->dir);
		if ((out = create(r, dirfd, name, tmp, sizeof(tmp), &seq)) == -1)
			die("create");
		if (pwrite(out, buf, (size_t)len, 0) != len)
			die("pwrite");
		publish(r, dirfd, out, name, tmp);
		close(out);
	}
	for (int i = 0; i < d->n; i++)
		close(d->fd[i]);
	free(d);
	free(buf);
	return NULL;
}

static void read_plan(struct run *r, const char *path)
{
	FILE *f = fopen(path, "r");
	char line[MAX_REL];
	size_t cap = 0;

	if (f == NULL)
		die(path);
	while (fgets(line, sizeof(line), f) != NULL) {
		char *tab = strchr(line, '\t'), *slash;
		struct item *it;

		if (tab == NULL || strlen(line) >= MAX_REL - 1)
			continue;
		*tab++ = '\0';
		tab[strcspn(tab, "\n")] = '\0';
		if (r->n == cap) {
			cap = cap ? 2 * cap : 1024;
			if ((r->items = realloc(r->items, cap * sizeof(*it))) == NULL)
				die("realloc");
		}
		it = &r->items[r->n++];
		snprintf(it->src, sizeof(it->src), "%s", line);
		snprintf(it->dir, sizeof(it->dir), "%s", tab);
		slash = strrchr(it->src, '/');
		it->base = slash ? (size_t)(slash + 1 - it->src) : 0;
	}
	fclose(f);
}

int main(int argc, char **argv)
{
	struct run r = { 0 };
	pthread_t t[MAX_THREADS];
	int threads;

	if (argc != 6) {
		fprintf(stderr, "usage: create_ways WAY(0|1|2) THREADS SRC "
			"PLAN DST\n");
		return 2;
	}
	r.way = atoi(argv[1]);
	threads = atoi(argv[2]);
	if (r.way < 0 || r.way > 2 || threads < 1 || threads > MAX_THREADS) {
		fprintf(stderr, "create_ways: WAY 0..2, THREADS 1..%d\n",
			MAX_THREADS);
		return 2;
	}
	if ((r.srcfd = open(argv[3], O_RDONLY | O_DIRECTORY)) == -1)
		die(argv[3]);
	read_plan(&r, argv[4]);
	if (mkdir(argv[5], 0755) == -1 && errno != EEXIST)
		die(argv[5]);
	if ((r.rootfd = open(argv[5], O_RDONLY | O_DIRECTORY)) == -1)
		die(argv[5]);
	for (int i = 0; i < threads; i++)
		if (pthread_create(&t[i], NULL, worker, &r) != 0)
			die("pthread_create");
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	if (syncfs(r.rootfd) == -1)
		die("syncfs");
	free(r.items);
	return 0;
}
