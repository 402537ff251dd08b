/*
 * delivery.h - the contract between the forwarder and its two transports.
 *
 * Owns: the description of one peer (DICOM or DICOMweb), one batch item and
 * the outcome a transport gives it. The forwarder (outbox, retries, records)
 * knows nothing of DIMSE or HTTP; a transport knows nothing of the outbox.
 * Both transports are blocking and must be called from a worker thread,
 * never from the event loop; each call opens its own association or
 * connection, so calls on different threads do not share state.
 *
 * Outcome of one item, as DICOM means it:
 *   DELIVERY_DONE      the peer confirmed it (C-STORE success or warning;
 *                      STOW-RS: in ReferencedSOPSequence). Drop the entry.
 *   DELIVERY_RETRY     nothing is wrong with the file: peer down, refused,
 *                      timed out, out of resources (A7xx), 5xx, connection
 *                      lost before the answer. Keep the entry, back off.
 *   DELIVERY_REJECTED  the peer refused this data set (A9xx, Cxxx, no
 *                      presentation context for it, STOW FailedSOPSequence
 *                      or a 4xx that names the file). Never resend blindly.
 * Texts in reason/err never hold values from the data set (no PHI): only
 * UIDs of SOP classes and transfer syntaxes, statuses and peer addresses.
 */
#ifndef DICOMSORT_DELIVERY_H
#define DICOMSORT_DELIVERY_H

#include <stddef.h>

#include "dicomsort/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DELIVERY_UID_MAX 65
#define DELIVERY_REASON_MAX 256

enum delivery_result {
	DELIVERY_PENDING = 0,
	DELIVERY_DONE,
	DELIVERY_RETRY,
	DELIVERY_REJECTED,
};

struct delivery_item {
	const char *path;			/* in: the file to send */
	char sop_class_uid[DELIVERY_UID_MAX];	/* in: filled by the caller */
	char sop_instance_uid[DELIVERY_UID_MAX];/* in: filled by the caller */
	char transfer_syntax_uid[DELIVERY_UID_MAX]; /* in: the file's own */
	enum delivery_result result;		/* out */
	unsigned status;	/* out: DIMSE status, or HTTP status, 0 if none */
	char reason[DELIVERY_REASON_MAX];	/* out: one line, no PHI */
};

/* A DICOM (DIMSE) peer. Timeouts in seconds; 0 = the default. */
struct dimse_peer {
	const char *host;
	int port;
	const char *called_ae;
	const char *calling_ae;
	int tls;			/* 0 plain TCP, 1 TLS (dcmtls) */
	const char *tls_ca_file;	/* trusted CA (PEM) to verify the peer */
	const char *tls_cert_file;	/* our certificate (PEM), optional */
	const char *tls_key_file;	/* its key (PEM, 0600), optional */
	int tls_verify;			/* 1: the peer's certificate must verify */
	int connect_timeout_s;
	int acse_timeout_s;
	int dimse_timeout_s;
	int allow_conversion;	/* may send another syntax if the peer
				   accepts none the file is in */
};

/* A DICOMweb STOW-RS peer. */
struct stow_peer {
	const char *url;		/* .../studies */
	const char *token_file;		/* bearer token, 0600, optional */
	const char *basic_auth_file;	/* "user:password", 0600, optional */
	int tls_verify;			/* 1 (default): verify the server */
	const char *tls_ca_file;	/* extra CA bundle, optional */
	int connect_timeout_s;
	int timeout_s;			/* whole request */
};

/*
 * Send items[0..n) over one association (DIMSE) or one multipart request
 * (STOW-RS) and set each item's result. Returns 0 when every item has a
 * result; -1 with err filled when the whole batch must be retried (peer
 * unreachable, association rejected, timeout, lost connection): then every
 * item still DELIVERY_PENDING is to be treated as DELIVERY_RETRY.
 */
int dimse_send(const struct dimse_peer *peer, struct delivery_item *items,
	       size_t n, struct error *err);
int stow_send(const struct stow_peer *peer, struct delivery_item *items,
	      size_t n, struct error *err);

/* --check-config --probe: C-ECHO, or HTTP OPTIONS on the URL. 0 or -1. */
int dimse_echo(const struct dimse_peer *peer, struct error *err);
int stow_probe(const struct stow_peer *peer, struct error *err);

#ifdef __cplusplus
}
#endif

#endif
