/*
 * fuzz_walk.c - the element walker (src/part10.c, part10_walk()) over
 * memory and over descriptors.
 *
 * Input: a control byte, a window byte, then the bytes walked. The control
 * byte's high bit picks a whole-file walk (part10_walk_file(), meta header
 * and transfer syntax from the bytes, the limits check too); otherwise its
 * low four bits are part10_walk()'s encoding and strictness
 * (PART10_IMPLICIT, _BIG, _DEFLATED, _STRICT) over a bare dataset. The
 * window byte sizes the descriptor's window (PART10_MIN_WINDOW up).
 *
 * The same bytes are walked from memory, from a memfd (seekable, size
 * known: skips are lseek()s), from the memfd read positionally (pread(2)
 * beyond a head held in memory, as part10_index_fd() does), from a pipe (read(2) only) with the size
 * known and, for a lenient walk, unknown. Every walk must give the same
 * headers in the same order and the same result; a strict walk that ends
 * cleanly must have every header and value inside the bytes, in order.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "part10.h"

struct trace {
	struct part10_header *h;
	size_t count, cap;
};

static void die(const char *what)
{
	fprintf(stderr, "fuzz_walk: %s\n", what);
	abort();
}

static int record(void *ctx, const struct part10_header *h)
{
	struct trace *t = ctx;

	if (t->count == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 64;
		struct part10_header *grown = realloc(t->h, cap * sizeof(*grown));

		if (grown == NULL)
			die("out of memory");
		t->h = grown;
		t->cap = cap;
	}
	t->h[t->count++] = *h;
	return 0;
}

struct run {
	bool file;		/* part10_walk_file(), else part10_walk() */
	unsigned how;
	int rc;
	struct trace trace;
};

static void walk(struct run *r, const struct part10_source *src)
{
	memset(&r->trace, 0, sizeof(r->trace));
	r->rc = r->file ? part10_walk_file(src, record, &r->trace) :
		part10_walk(src, 0, r->how, NULL, record, &r->trace);
}

static bool same_header(const struct part10_header *a, const struct part10_header *b)
{
	return a->tag == b->tag && strcmp(a->vr, b->vr) == 0 && a->len == b->len &&
	       a->prev == b->prev && a->offset == b->offset &&
	       a->header_len == b->header_len && a->depth == b->depth &&
	       a->node == b->node && a->in_item == b->in_item;
}

static void same_walk(const struct run *a, const struct run *b, const char *how)
{
	if (a->rc != b->rc) {
		fprintf(stderr, "fuzz_walk: %s: result %d, from memory %d\n", how,
			b->rc, a->rc);
		abort();
	}
	if (a->trace.count != b->trace.count) {
		fprintf(stderr, "fuzz_walk: %s: %zu headers, from memory %zu\n", how,
			b->trace.count, a->trace.count);
		abort();
	}
	for (size_t i = 0; i < a->trace.count; i++)
		if (!same_header(&a->trace.h[i], &b->trace.h[i])) {
			fprintf(stderr, "fuzz_walk: %s: header %zu differs (tag "
				"%08x/%08x, offset %llu/%llu)\n", how, i,
				a->trace.h[i].tag, b->trace.h[i].tag,
				(unsigned long long)a->trace.h[i].offset,
				(unsigned long long)b->trace.h[i].offset);
			abort();
		}
}

/* A strict walk that ended cleanly stayed inside the bytes, in order. */
static void inside(const struct run *r, size_t size)
{
	uint64_t next = 0;

	if (!(r->how & PART10_STRICT) || r->file || r->rc != 0 ||
	    (r->how & PART10_DEFLATED))
		return;
	for (size_t i = 0; i < r->trace.count; i++) {
		const struct part10_header *h = &r->trace.h[i];

		if (h->offset < next || h->offset + h->header_len > size)
			die("a header outside the bytes or out of order");
		next = h->offset + h->header_len;
		if ((h->node == PART10_ELEMENT || h->node == PART10_FRAGMENT) &&
		    h->len > size - next)
			die("a value past the end");
		if (h->node == PART10_ELEMENT || h->node == PART10_FRAGMENT)
			next += h->len;
	}
	if (r->trace.count > 0 && next > size)
		die("walked past the end");
}

static int memfd_of(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz_walk", MFD_CLOEXEC);

	if (fd == -1)
		die("memfd_create");
	for (size_t done = 0; done < size;) {
		ssize_t n = write(fd, data + done, size - done);

		if (n <= 0)
			die("write memfd");
		done += (size_t)n;
	}
	if (lseek(fd, 0, SEEK_SET) != 0)
		die("lseek memfd");
	return fd;
}

/* A pipe holding the bytes, its writing end closed; -1 if they do not fit
 * its buffer. */
static int pipe_of(const uint8_t *data, size_t size)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC) == -1)
		die("pipe");
	if (size > 65536 && fcntl(p[1], F_SETPIPE_SZ, (int)size) < (int)size) {
		close(p[0]);
		close(p[1]);
		return -1;
	}
	for (size_t done = 0; done < size;) {
		ssize_t n = write(p[1], data + done, size - done);

		if (n <= 0)
			die("write pipe");
		done += (size_t)n;
	}
	close(p[1]);
	return p[0];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct run mem = { 0 }, other = { 0 };
	struct part10_source src = { 0 };
	size_t window;
	int fd;

	if (size < 2)
		return 0;
	mem.file = (data[0] & 0x80) != 0;
	mem.how = data[0] & 0x0f;
	window = PART10_MIN_WINDOW + (size_t)data[1] * 61;
	data += 2;
	size -= 2;
	other.file = mem.file;
	other.how = mem.how;

	src.bytes = data;
	src.size = size;
	walk(&mem, &src);
	inside(&mem, size);

	src.bytes = NULL;
	src.window = window;
	src.fd = memfd_of(data, size);
	walk(&other, &src);
	same_walk(&mem, &other, "memfd");
	free(other.trace.h);

	/* Positional (pread(2), the offset left where it is: at the end
	 * here) with some of the head held in memory already. */
	src.positional = true;
	src.head = data;
	src.held = size == 0 ? 0 : (size_t)data[0] * 131 % (size + 1);
	walk(&other, &src);
	same_walk(&mem, &other, "memfd, positional");
	free(other.trace.h);
	src.positional = false;
	src.head = NULL;
	src.held = 0;
	close(src.fd);

	if ((fd = pipe_of(data, size)) != -1) {
		src.fd = fd;
		walk(&other, &src);
		same_walk(&mem, &other, "pipe");
		free(other.trace.h);
		close(fd);
	}
	/* Without a size only the stream's end is known: a lenient walk
	 * never looks further than the next header anyway. */
	if ((mem.file || !(mem.how & PART10_STRICT)) &&
	    (fd = pipe_of(data, size)) != -1) {
		src.fd = fd;
		src.size = PART10_SIZE_UNKNOWN;
		walk(&other, &src);
		same_walk(&mem, &other, "pipe, size unknown");
		free(other.trace.h);
		close(fd);
	}
	if (mem.file) {
		struct part10_source m = { .bytes = data, .size = size };
		struct part10_source f = { .fd = memfd_of(data, size), .size = size,
					   .window = window };

		if (part10_check_limits(&m) != part10_check_limits(&f))
			die("limits differ between memory and memfd");
		close(f.fd);
	}
	free(mem.trace.h);
	return 0;
}
