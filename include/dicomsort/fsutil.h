/*
 * fsutil.h - file system steps that keep output inside its root and durable.
 *
 * Owns: walking/creating directories below a root descriptor without ever
 * following a symlink, temp files, no-clobber publication and fsync. Every
 * function works relative to directory descriptors (the *at() calls), so a
 * symlink planted inside the output tree can not redirect a write outside.
 * Return: a descriptor or 0 on success, -1 with *err filled.
 */
#ifndef DICOMSORT_FSUTIL_H
#define DICOMSORT_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>

#include "dicomsort/error.h"

/** Prefix of every named temp file we create. */
#define FSUTIL_TMP_PREFIX ".dicomsort-"
#define FSUTIL_TMP_SUFFIX ".tmp"

/** Open (creating with parents if create) the directory path. */
int fsutil_open_dir(const char *path, bool create, struct error *err);

/**
 * Open the directory relpath below rootfd, creating missing components
 * (mode 0755 minus umask). relpath must be relative without "." or ".."
 * components (layout_expand() guarantees it); a component that exists as a
 * symlink or non-directory is an error.
 */
int fsutil_mkdirs_at(int rootfd, const char *relpath, struct error *err);

/** Create a new empty temp file in dirfd; its name goes to name. */
int fsutil_tmpfile_at(int dirfd, char *name, size_t namelen, struct error *err);

/**
 * Like fsutil_tmpfile_at(), but where the file system allows (O_TMPFILE)
 * the file has no name at all until fsutil_publish() links it, so a crash
 * at any moment - SIGKILL, power loss - leaves nothing behind. name then
 * gets "/proc/self/fd/N": keep the descriptor open until published. Falls
 * back to a named temp file elsewhere. fsutil_discard_tmp() drops either.
 */
int fsutil_anon_tmpfile_at(int dirfd, char *name, size_t namelen,
			   struct error *err);

/** Remove an unpublished temp file by its name (nothing to do for an
 *  anonymous one: closing its descriptor frees it). */
void fsutil_discard_tmp(int dirfd, const char *name);

/** Copy len bytes from offset 0 of in to the empty file out, in the kernel
 *  (copy_file_range) where possible. A source shorter than len is an
 *  error (ERROR_TRANSIENT: it changed under us). */
int fsutil_copy_fd(int in, int out, off_t len, struct error *err);

/** 1 if the two open files have identical bytes, 0 if not, -1 on error. */
int fsutil_same_content(int fd_a, int fd_b, struct error *err);

/**
 * Give the file tmpname in dirfd the name final, atomically, only if final
 * does not exist yet (renameat2 RENAME_NOREPLACE, or link+unlink where the
 * file system lacks it; an anonymous temp file is linked by linkat()). Returns 0, 1 when final already exists (tmpname is
 * left in place), or -1.
 */
int fsutil_publish(int dirfd, const char *tmpname, const char *final,
		   struct error *err);

/** fsync a descriptor, reporting errors as transient. */
int fsutil_fsync(int fd, const char *what, struct error *err);

/** Split base into stem and extension the way Python's os.path.splitext
 *  does ("a.dcm" -> "a" ".dcm", ".x" -> ".x" ""); writes
 *  "<stem>_<n><ext>" (n > 0) or base itself (n == 0) into out. */
int fsutil_numbered_name(const char *base, unsigned n, char *out, size_t len);

#endif
