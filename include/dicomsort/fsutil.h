/*
 * fsutil.h - file system steps that keep output inside its root and durable.
 *
 * Owns: walking/creating directories below a root descriptor without ever
 * following a symlink, temp files, no-clobber publication and fsync, and
 * the one safe move every moved file goes through (fsutil_move()). Every
 * function works relative to directory descriptors (the *at() calls), so a
 * symlink planted inside the output tree can not redirect a write outside.
 * Return: a descriptor or 0 on success, -1 with *err filled.
 */
#ifndef DICOMSORT_FSUTIL_H
#define DICOMSORT_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <limits.h>
#include <sys/stat.h>

#include "dicomsort/error.h"

/** Prefix of every named temp file we create. */
#define FSUTIL_TMP_PREFIX ".dicomsort-"
#define FSUTIL_TMP_SUFFIX ".tmp"
/** Prefix of a source claimed by fsutil_move()/fsutil_remove(): the claim
 *  is "<prefix><inode in hex>.<original name>" in the source's folder. */
#define FSUTIL_CLAIM_PREFIX FSUTIL_TMP_PREFIX "claim-"

/** snprintf(out, len, "%s", s) without the format machinery, for the
 *  per-file paths: copies what fits, always NUL-terminates (len > 0),
 *  returns strlen(s) (>= len: cut short). */
size_t fsutil_copy_str(char *out, size_t len, const char *s);

/** snprintf(out, len, "/proc/self/fd/%d", fd) the same way. */
size_t fsutil_proc_fd_path(char *out, size_t len, int fd);

/** snprintf(out, len, "%s/%s", dir, name) the same way. */
size_t fsutil_join_path(char *out, size_t len, const char *dir,
			const char *name);

/** Open (creating with parents if create) the directory path. */
int fsutil_open_dir(const char *path, bool create, struct error *err);

/**
 * Open the directory relpath below rootfd, creating missing components
 * (mode 0755 minus umask). relpath must be relative without "." or ".."
 * components (layout_expand() guarantees it); a component that exists as a
 * symlink or non-directory is an error.
 */
int fsutil_mkdirs_at(int rootfd, const char *relpath, struct error *err);

/* How fsutil_mkdirs_sync_at() makes the folders of a path durable (0
 * and 1 are false and true: "fsync the parent of a new folder"). */
enum fsutil_dirs_sync {
	FSUTIL_DIRS_DEFER = 0,	/* none: the caller syncs the file system
				   (syncfs) before anything relies on them */
	FSUTIL_DIRS_SYNC_NEW = 1,	/* fsync the parent of each folder it
					   makes (fsutil_mkdirs_at()) */
	FSUTIL_DIRS_SYNC_PATH = 2,	/* fsync the parent of every folder
					   on the path, made or found: durable
					   even where another writer made one
					   under FSUTIL_DIRS_DEFER (a clean
					   folder's fsync costs no journal
					   commit) */
};

/**
 * The folder at relpath under rootfd when it and every folder above it
 * exist, opened in one call; -1 otherwise (nothing made, errno set). It
 * refuses what fsutil_mkdirs_at() refuses (a symlink anywhere, "." and
 * ".."), and a failure says only "walk instead": fsutil_mkdirs_sync_at()
 * tries it first where it has no folder to fsync.
 */
int fsutil_open_existing_at(int rootfd, const char *relpath);

/** fsutil_mkdirs_at() with the durability of the folders chosen. */
int fsutil_mkdirs_sync_at(int rootfd, const char *relpath,
			  enum fsutil_dirs_sync how, struct error *err);

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

/** fsutil_anon_tmpfile_at() created with mode (less the umask, as open()
 *  applies it) instead of 0600 when anonymous (name starts with '/'); a
 *  named fallback is 0600 and its caller fchmod()s it once complete. */
int fsutil_anon_tmpfile_mode_at(int dirfd, mode_t mode, char *name,
				size_t namelen, struct error *err);

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

/*
 * Clash naming that stays constant-time: candidates 0..FSUTIL_PLAIN_CLASHES-1
 * are the numbered names above ("a.dcm", "a_1.dcm", ...); after them
 * comes "a_<h>.dcm", h the first 16 hex digits of the SHA-256 of the
 * file's bytes (so the same bytes find their earlier copy: idempotent),
 * then "a_<h>_1.dcm"... for the (practically never) clash of h. Many
 * same-named files thus cost a few probes each, never one per earlier
 * file, and no count of them is ever too many.
 */
#define FSUTIL_PLAIN_CLASHES 8
/** Longest suffix a clash name adds: "_" 16 hex "_" and a number. */
#define FSUTIL_CLASH_SUFFIX_MAX 28

/** The n-th candidate for base; hash is 16 hex digits (needed only from
 *  n = FSUTIL_PLAIN_CLASHES on, may be NULL before). */
int fsutil_clash_name(const char *base, unsigned n, const char *hash,
		      char *out, size_t len);

/** hex (17 bytes) gets the first 16 hex digits of the SHA-256 of fd's
 *  bytes, read with pread from offset 0. */
int fsutil_hash_fd(int fd, char *hex, struct error *err);

/** hex (65 bytes) gets the SHA-256 of fd's bytes, read from offset 0. */
int fsutil_sha256_fd(int fd, char *hex, struct error *err);

/** Whether a and b are the same version of a file: inode, size, mtime
 *  and ctime (a writer can set mtime back, never ctime). */
bool fsutil_same_version(const struct stat *a, const struct stat *b);

enum fsutil_side {
	FSUTIL_SIDE_NONE,
	FSUTIL_SIDE_SOURCE,	/* the source or its folder failed */
	FSUTIL_SIDE_DEST,	/* the destination failed */
};

/*
 * One safe move, used wherever a file moves (processed, quarantine, hold,
 * out of hold, dicomsort --move). In order:
 *   1. claim: the source must still be expect if given - the version read:
 *      dev, ino, size, mtime and ctime, or, when only ctime moved (a
 *      rename, chmod), bytes that still hash to expect_sha256 - held by a
 *      read lease where one is granted (a file open for writing is refused;
 *      a writer opening it meanwhile waits); it is renamed to its claim
 *      name in its own folder, so a sender re-delivering under the
 *      original name is never touched, and checked again once claimed.
 *      Any difference sets changed: process the source again, never
 *      dispose of it;
 *   2. a file with identical content already under a candidate name is
 *      taken as our own earlier copy (a retry, a crash): the source is
 *      removed and nothing is copied twice (existed);
 *   3. rename without replacing (RENAME_NOREPLACE), numbered on a clash;
 *      a candidate whose name+companion exists is skipped too;
 *   4. on EXDEV (another file system, or another bind mount of the same
 *      one, as systemd's ReadWritePaths= makes): copy into a temp file of
 *      the destination (mode: mode, or the source's; times kept), fsync,
 *      link under a name that replaces nothing, fsync the folder, and
 *      only then remove the source (copied).
 * On failure a claimed source gets its name back; side says which side
 * failed. After a SIGKILL a claim may be left: fsutil_recover_claims().
 *
 * Durability: both folders are fsynced before fsutil_move() returns -
 * unless defer_sync, the group commit of a batch (dicomsort --move): the
 * caller promises a syncfs of both file systems before it relies on the
 * move or exits successfully. A rename destroys no byte (the inode is
 * under one name or the other at every instant), so only the names wait
 * for that syncfs; where a source is destroyed (a copy across file
 * systems, or a source whose identical copy existed already) the
 * destination's file system is still synced first (syncfs: its folders
 * may be new and unsynced too), then the source goes.
 */
struct fsutil_move {
	const char *source;		/* path of the file */
	const struct stat *expect;	/* NULL, or the file read */
	const char *expect_sha256;	/* NULL, or hex SHA-256 of its bytes */
	int dest_dirfd;
	const char *name;		/* wanted name in dest_dirfd */
	const char *companion;		/* NULL, or a sidecar suffix */
	mode_t mode;			/* 0: keep the source's */
	/* NULL, or called with each free candidate name just before the
	 * file takes it: writes the sidecar name+companion first (over an
	 * orphan a kill left), so the file never stands without it. 1:
	 * taken, try the next name. The sidecar is removed again if the
	 * file then does not get the name. */
	int (*before_place)(void *ctx, int dirfd, const char *name,
			    struct error *err);
	void *ctx;
	/* NULL, or told each candidate name right before the file may take
	 * it (no sidecar: the rename itself refuses a taken name), with the
	 * identity it will have there (the claimed source's, or its copy's):
	 * a caller notes what is owed once the name exists. -1 (err
	 * filled) abandons the move. Shares ctx with before_place. */
	int (*naming)(void *ctx, const char *name, const struct stat *st,
		      struct error *err);
	bool defer_sync;		/* see "Durability" above */
	/* NULL, or the caller's open descriptor of the version read
	 * (expect; O_RDONLY): the read lease is taken on it - and lasts
	 * until the caller closes it - instead of on one opened here. */
	const int *source_fd;
	/* With source_fd and expect: the caller holds a read lease on
	 * *source_fd (fsutil_lease() returned 1), taken before it fstat'ed
	 * expect. Then no write can have reached the inode since expect
	 * without breaking the lease (a writer's open breaks it and waits;
	 * one open for writing already refuses it), which the look at the
	 * lease right before the file takes its new name catches: the name
	 * is not looked at before the claim (one fstatat and the lease's two
	 * fcntl less per file). What the claim's rename took is checked
	 * under its claim name - inode, size and mtime of expect - and
	 * anything else gets its name back (changed): a file a sender
	 * swapped in under the name never leaves its folder, and after a
	 * crash fsutil_recover_claims() gives it its name back too. */
	bool source_leased;
	/* NULL, or an open descriptor of the source's folder (the folder
	 * of source as the caller opened it), used instead of opening it. */
	const int *source_dirfd;
	/* out */
	char final[NAME_MAX + 1];	/* the name it got */
	bool copied;
	bool existed;
	bool changed;			/* not the version read: keep it */
	bool placed;			/* it took mv->final (also when a
					   later step then failed) */
	enum fsutil_side side;
	/* private */
	bool leased, own_dirfd, own_lease;
	int src_dirfd, tmp_fd, lease_fd;
	struct stat src_st;
	char src_base[NAME_MAX + 1], claim[NAME_MAX + 1], tmp[64];
};

int fsutil_move(struct fsutil_move *mv, struct error *err);

/** A read lease on fd (a regular file open O_RDONLY): 1 held until fd is
 *  closed or F_UNLCK, 0 none to be had (not the owner and no CAP_LEASE, a
 *  file system without leases), -1 the file is open for writing. Its
 *  break is signalled with SIGIO unless F_SETSIG names another, and SIGIO
 *  would end the process: SIGURG (ignored by default) is set per file -
 *  unless sigio_ignored, the caller's promise that the process ignores
 *  SIGIO (fsutil_ignore_sigio()), which saves that fcntl. Either way the
 *  break is seen by F_GETLEASE, never by a handler. */
int fsutil_lease(int fd, bool sigio_ignored);

/** SIGIO ignored process-wide (SIG_IGN, before any thread starts): a
 *  lease break then needs no F_SETSIG per file (fsutil_lease()). For a
 *  process that uses no O_ASYNC/F_SETOWN I/O (dicomsort). -1 on error. */
int fsutil_ignore_sigio(void);

/** Delete source - only if it is still expect - by claiming it first
 *  (see fsutil_move()); *side (may be NULL) says which side failed. */
int fsutil_remove(const char *source, const struct stat *expect,
		  enum fsutil_side *side, struct error *err);

/** fsutil_remove() with the content check of fsutil_move() (1.). */
struct fsutil_remove_args {
	const char *source;
	const struct stat *expect;
	const char *expect_sha256;	/* NULL, or hex SHA-256 */
	/* out */
	enum fsutil_side side;
	bool changed;			/* not the version read: kept */
};

int fsutil_remove_checked(struct fsutil_remove_args *args, struct error *err);

/** Give every claim name below root its original name back (numbered if
 *  taken): run at start, before files are taken. Returns how many. */
long fsutil_recover_claims(const char *root, struct error *err);

/** The same for one file found by a walk of its own (dicomsort's of the
 *  input, which thus walks it once): if path's base is a claim name, it
 *  gets its original name back (numbered if taken), its folder is
 *  fsynced, and out gets the path it has now. 1 recovered, 0 not a claim
 *  name, -1 a claim left as it is (errno). */
int fsutil_recover_claim(const char *path, char *out, size_t outlen);

#endif
