/*
 * dimse.cpp - the DICOM network adapter over DCMTK's dcmnet and dcmtls: the
 * DIMSE half of delivery.h (dimse_send, dimse_echo).
 *
 * Owns: one association per call, the presentation contexts proposed for a
 * batch (per SOP class and the file's own transfer syntax), the choice of a
 * context per file, conversion when the destination allows it, the mapping
 * of C-STORE statuses to delivery results, and TLS per call.
 * Like dicom.cpp: every entry is extern "C", catches every exception and
 * never logs. Texts hold only UIDs of SOP classes and transfer syntaxes,
 * statuses, AE titles and the peer's address, never a value of a data set.
 *
 * DCMTK keeps some settings process-wide (logging, the codec registry,
 * OpenSSL, the TCP connect timeout): they are set once, before the first
 * association, never per call, so calls on different threads share nothing
 * else. The connect timeout of DCMTK 3.6.7 is such a global, so each call
 * first connects on its own with the peer's timeout; DCMTK's connect, which
 * follows a successful one, keeps the process-wide bound CONNECT_BOUND_S.
 */
#include "dicomsort/delivery.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dcrleerg.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpeg/djencode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/dcmjpls/djencode.h>
#include <dcmtk/dcmnet/assoc.h>
#include <dcmtk/dcmnet/dcmtrans.h>
#include <dcmtk/dcmnet/dimse.h>
#include <dcmtk/dcmnet/diutil.h>
#include <dcmtk/dcmnet/dul.h>
#include <dcmtk/dcmtls/tlslayer.h>
#include <dcmtk/oflog/oflog.h>

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cstdarg>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <map>
#include <memory>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

/* Defaults for a timeout of 0 in struct dimse_peer, in seconds. */
constexpr int DEFAULT_CONNECT_S = 10;
constexpr int DEFAULT_ACSE_S = 30;
constexpr int DEFAULT_DIMSE_S = 60;
/* DCMTK's own connect, after ours succeeded: never unbounded. */
constexpr int CONNECT_BOUND_S = 60;
/* Odd context IDs 1..255: at most 128 contexts in one association. */
constexpr size_t MAX_CONTEXTS = 128;

/* Written once under pthread_once, read-only afterwards. */
pthread_once_t init_once = PTHREAD_ONCE_INIT;
bool init_ok;

void init_process()
{
	try {
		OFLog::configure(OFLogger::OFF_LOG_LEVEL);
		dcmConnectionTimeout.set(CONNECT_BOUND_S);
		/* Decoders and lossless encoders, for allow_conversion. */
		DcmRLEDecoderRegistration::registerCodecs();
		DcmRLEEncoderRegistration::registerCodecs();
		DJDecoderRegistration::registerCodecs();
		DJEncoderRegistration::registerCodecs();
		DJLSDecoderRegistration::registerCodecs();
		DJLSEncoderRegistration::registerCodecs();
		DcmTLSTransportLayer::initializeOpenSSL();
		init_ok = dcmDataDict.isDictionaryLoaded();
	} catch (...) {
		init_ok = false;
	}
}

/*
 * A write to a peer that closed raises SIGPIPE in the writing thread,
 * which would kill the daemon: block it for this thread during the call
 * and swallow the one our writes raised. The process disposition stays
 * whatever the daemon chose.
 */
class sigpipe_guard {
public:
	sigpipe_guard()
	{
		sigemptyset(&pipe_);
		sigaddset(&pipe_, SIGPIPE);
		pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
	}
	~sigpipe_guard()
	{
		sigset_t pending;
		struct timespec zero = { 0, 0 };

		if (!sigismember(&old_, SIGPIPE) && sigpending(&pending) == 0 &&
		    sigismember(&pending, SIGPIPE))
			(void)sigtimedwait(&pipe_, nullptr, &zero);
		pthread_sigmask(SIG_SETMASK, &old_, nullptr);
	}
	sigpipe_guard(const sigpipe_guard &) = delete;
	sigpipe_guard &operator=(const sigpipe_guard &) = delete;

private:
	sigset_t pipe_, old_;
};

struct timeouts {
	int connect, acse, dimse;
};

timeouts timeouts_of(const struct dimse_peer *peer)
{
	return {
		peer->connect_timeout_s > 0 ? peer->connect_timeout_s : DEFAULT_CONNECT_S,
		peer->acse_timeout_s > 0 ? peer->acse_timeout_s : DEFAULT_ACSE_S,
		peer->dimse_timeout_s > 0 ? peer->dimse_timeout_s : DEFAULT_DIMSE_S,
	};
}

/* One presentation context to propose: a SOP class, syntaxes in order. */
struct proposal {
	std::string sop;
	std::vector<std::string> syntaxes;
};

/* Everything one association holds; the destructor frees it all. */
struct association {
	T_ASC_Network *net = nullptr;
	T_ASC_Association *assoc = nullptr;
	std::unique_ptr<DcmTLSTransportLayer> tls;
	bool established = false;
	std::string peer;	/* "host:port" for messages */
	timeouts t {};

	association() = default;
	association(const association &) = delete;
	association &operator=(const association &) = delete;
	~association()
	{
		if (assoc) {
			if (established)
				ASC_abortAssociation(assoc);
			ASC_destroyAssociation(&assoc);
		}
		if (net)
			ASC_dropNetwork(&net);
	}
	void abort()
	{
		if (assoc && established)
			ASC_abortAssociation(assoc);
		established = false;
	}
	/* All results are in: a failed release changes none of them. */
	void release()
	{
		if (assoc && established && ASC_releaseAssociation(assoc).bad())
			ASC_abortAssociation(assoc);
		established = false;
	}
};

bool native_syntax(const std::string &uid)
{
	DcmXfer x(uid.c_str());

	return x.getXfer() != EXS_Unknown && !x.isEncapsulated();
}

/* Targets conversion may choose: never a lossy one. */
bool lossless_target(E_TransferSyntax x)
{
	switch (x) {
	case EXS_LittleEndianExplicit:
	case EXS_LittleEndianImplicit:
	case EXS_BigEndianExplicit:
	case EXS_DeflatedLittleEndianExplicit:
	case EXS_RLELossless:
	case EXS_JPEGProcess14SV1:
	case EXS_JPEGProcess14:
	case EXS_JPEGLSLossless:
		return true;
	default:
		return false;
	}
}

void set_reason(struct delivery_item *item, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

void set_reason(struct delivery_item *item, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(item->reason, sizeof(item->reason), fmt, ap);
	va_end(ap);
}

void reject(struct delivery_item *item, unsigned status, const char *why)
{
	item->result = DELIVERY_REJECTED;
	item->status = status;
	set_reason(item, "%s", why);
}

/* One line: DCMTK's texts may span several. */
std::string one_line(std::string s)
{
	for (char &c : s)
		if (c == '\n' || c == '\r' || c == '\t')
			c = ' ';
	return s;
}

/* ---- the result of a C-STORE status (PS3.4 B.2.3, PS3.7 C) ---- */

enum delivery_result result_of_status(unsigned status)
{
	if (status == 0x0000 || status == 0x0001 || (status & 0xF000) == 0xB000)
		return DELIVERY_DONE;		/* success, warnings */
	if ((status & 0xFF00) == 0xA700 || status == 0xFE00)
		return DELIVERY_RETRY;		/* out of resources, cancel */
	return DELIVERY_REJECTED;		/* A9xx, Cxxx, 01xx, 02xx... */
}

void record_status(struct delivery_item *item, unsigned status)
{
	item->result = result_of_status(status);
	item->status = status;
	if (status == 0)
		item->reason[0] = '\0';
	else
		set_reason(item, "C-STORE status 0x%04X (%s)", status,
			   DU_cstoreStatusString(static_cast<Uint16>(status)));
}

/* ---- connecting ---- */

/*
 * Connect on our own with the peer's timeout, then close: DCMTK's connect
 * timeout is process-wide. What is down, refused or unroutable fails here,
 * within the timeout the destination asked for.
 */
int probe_connect(const struct dimse_peer *peer, int timeout_s,
		  struct error *err)
{
	struct addrinfo hints {}, *list = nullptr;
	char port[16];
	int rc, last = ECONNREFUSED;
	struct timespec start;

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%d", peer->port);
	rc = getaddrinfo(peer->host, port, &hints, &list);
	if (rc != 0)
		return error_set(err, ERROR_TRANSIENT, 0, "peer %s:%d: cannot "
				 "resolve the host (%s)", peer->host, peer->port,
				 gai_strerror(rc));
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
		struct timespec now;
		long left;
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
				SOCK_CLOEXEC, ai->ai_protocol);

		if (fd == -1) {
			last = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
			close(fd);
			freeaddrinfo(list);
			return 0;
		}
		last = errno;
		if (last == EINPROGRESS) {
			struct pollfd p = { fd, POLLOUT, 0 };
			int soerr = 0;
			socklen_t len = sizeof(soerr);

			clock_gettime(CLOCK_MONOTONIC, &now);
			left = timeout_s * 1000L -
			       ((now.tv_sec - start.tv_sec) * 1000L +
				(now.tv_nsec - start.tv_nsec) / 1000000L);
			do
				rc = poll(&p, 1, left > 0 ? static_cast<int>(left) : 0);
			while (rc == -1 && errno == EINTR);
			if (rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR,
						  &soerr, &len) == 0 && soerr == 0) {
				close(fd);
				freeaddrinfo(list);
				return 0;
			}
			last = rc == 0 ? ETIMEDOUT : (soerr ? soerr : errno);
		}
		close(fd);
	}
	freeaddrinfo(list);
	return error_set(err, ERROR_TRANSIENT, last, "peer %s:%d: cannot connect",
			 peer->host, peer->port);
}

bool ip_literal(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 ||
	       inet_pton(AF_INET6, host, buf) == 1;
}

int tls_setup(const struct dimse_peer *peer, association &a, struct error *err)
{
	a.tls.reset(new DcmTLSTransportLayer(NET_REQUESTOR, nullptr, OFFalse));
	if (!*a.tls || a.tls->setTLSProfile(TSP_Profile_BCP195).bad() ||
	    a.tls->activateCipherSuites().bad())
		return error_set(err, ERROR_SETUP, 0, "peer %s: TLS setup failed",
				 a.peer.c_str());
	if (peer->tls_ca_file && *peer->tls_ca_file &&
	    a.tls->addTrustedCertificateFile(peer->tls_ca_file,
					     DCF_Filetype_PEM).bad())
		return error_set(err, ERROR_SETUP, 0, "peer %s: cannot read the "
				 "TLS CA file", a.peer.c_str());
	if (peer->tls_cert_file && *peer->tls_cert_file) {
		const char *key = peer->tls_key_file && *peer->tls_key_file ?
				  peer->tls_key_file : peer->tls_cert_file;

		if (a.tls->setPrivateKeyFile(key, DCF_Filetype_PEM).bad() ||
		    a.tls->setCertificateFile(peer->tls_cert_file,
					      DCF_Filetype_PEM).bad() ||
		    !a.tls->checkPrivateKeyMatchesCertificate())
			return error_set(err, ERROR_SETUP, 0, "peer %s: cannot use "
					 "the TLS certificate and key", a.peer.c_str());
	}
	if (peer->tls_verify) {
		SSL_CTX *ctx = a.tls->getNativeHandle();
		X509_VERIFY_PARAM *param = ctx ? SSL_CTX_get0_param(ctx) : nullptr;
		int ok;

		a.tls->setCertificateVerification(DCV_requireCertificate);
		if (!param)
			return error_set(err, ERROR_SETUP, 0, "peer %s: TLS setup "
					 "failed", a.peer.c_str());
		if (!peer->tls_ca_file || !*peer->tls_ca_file)
			SSL_CTX_set_default_verify_paths(ctx);
		/* A chain that verifies is not enough: it must name the host. */
		ok = ip_literal(peer->host) ?
		     X509_VERIFY_PARAM_set1_ip_asc(param, peer->host) :
		     X509_VERIFY_PARAM_set1_host(param, peer->host, 0);
		if (ok != 1)
			return error_set(err, ERROR_SETUP, 0, "peer %s: TLS setup "
					 "failed", a.peer.c_str());
	} else {
		a.tls->setCertificateVerification(DCV_ignoreCertificate);
	}
	if (ASC_setTransportLayer(a.net, a.tls.get(), 0).bad())
		return error_set(err, ERROR_SETUP, 0, "peer %s: TLS setup failed",
				 a.peer.c_str());
	return 0;
}

bool ae_ok(const char *ae)
{
	size_t len = ae ? strlen(ae) : 0;

	return len > 0 && len <= 16;
}

int check_peer(const struct dimse_peer *peer, struct error *err)
{
	pthread_once(&init_once, init_process);
	if (!init_ok)
		return error_set(err, ERROR_SETUP, 0, "DICOM network setup failed "
				 "(data dictionary?)");
	if (!peer || !peer->host || !*peer->host || peer->port <= 0 ||
	    peer->port > 65535)
		return error_set(err, ERROR_SETUP, 0, "DICOM peer: no host or port");
	if (!ae_ok(peer->called_ae) || !ae_ok(peer->calling_ae))
		return error_set(err, ERROR_SETUP, 0, "peer %s:%d: AE titles must "
				 "have 1 to 16 characters", peer->host, peer->port);
	return 0;
}

int request_failed(association &a, T_ASC_Parameters *params,
		   const OFCondition &cond, const char *called, struct error *err)
{
	std::string why;

	if (cond == DUL_ASSOCIATIONREJECTED) {
		T_ASC_RejectParameters rej;
		OFString text;

		ASC_getRejectParameters(params, &rej);
		why = "association rejected (" +
		      one_line(ASC_printRejectParameters(text, &rej).c_str()) + ")";
	} else {
		why = "association failed (" + one_line(cond.text()) + ")";
	}
	/* The parameters belong to the association once it exists. */
	if (!a.assoc)
		ASC_destroyAssociationParameters(&params);
	return error_set(err, ERROR_TRANSIENT, 0, "peer %s (called AE %s): %s",
			 a.peer.c_str(), called, why.c_str());
}

/*
 * Each C-STORE is a few small writes and a wait for the answer: with
 * Nagle's algorithm against the peer's delayed ACK that costs ~40 ms a
 * file on loopback. DCMTK turns Nagle off only when the environment says
 * TCP_NODELAY (read per connection, process-wide): do it on our socket.
 */
struct socket_of : DcmTransportConnection {
	/* getSocket() is protected: a derived class may name it. */
	static DcmNativeSocketType get(DcmTransportConnection *conn)
	{
		DcmNativeSocketType (DcmTransportConnection::*fn)() =
			&socket_of::getSocket;

		return (conn->*fn)();
	}
};

void no_delay(T_ASC_Association *assoc)
{
	DcmTransportConnection *conn =
		DUL_getTransportConnection(assoc->DULassociation);
	int one = 1;
	int fd = conn ? socket_of::get(conn) : -1;

	if (fd >= 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Connect, negotiate props; 0 or -1 with err (the batch is retried). */
int open_association(const struct dimse_peer *peer,
		     const std::vector<proposal> &props, association &a,
		     struct error *err)
{
	T_ASC_Parameters *params = nullptr;
	OFCondition cond;
	unsigned char id = 1;

	a.t = timeouts_of(peer);
	a.peer = std::string(peer->host) + ":" + std::to_string(peer->port);
	if (probe_connect(peer, a.t.connect, err) == -1)
		return -1;
	if (ASC_initializeNetwork(NET_REQUESTOR, 0, a.t.acse, &a.net).bad())
		return error_set(err, ERROR_TRANSIENT, 0, "peer %s: cannot set up "
				 "the network", a.peer.c_str());
	if (peer->tls && tls_setup(peer, a, err) == -1)
		return -1;
	if (ASC_createAssociationParameters(&params, ASC_DEFAULTMAXPDU).bad())
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "peer %s",
				 a.peer.c_str());
	ASC_setAPTitles(params, peer->calling_ae, peer->called_ae, nullptr);
	cond = ASC_setTransportLayerType(params, peer->tls ? OFTrue : OFFalse);
	if (cond.good())
		cond = ASC_setPresentationAddresses(params, "localhost",
						    a.peer.c_str());
	for (const proposal &p : props) {
		std::vector<const char *> ts;

		for (const std::string &s : p.syntaxes)
			ts.push_back(s.c_str());
		if (cond.good())
			cond = ASC_addPresentationContext(params, id, p.sop.c_str(),
							  ts.data(),
							  static_cast<int>(ts.size()));
		id += 2;
	}
	if (cond.bad()) {
		ASC_destroyAssociationParameters(&params);
		return error_set(err, ERROR_SETUP, 0, "peer %s: cannot build the "
				 "association request (%s)", a.peer.c_str(), cond.text());
	}
	cond = ASC_requestAssociation(a.net, params, &a.assoc, nullptr, nullptr,
				      DUL_BLOCK, a.t.acse);
	if (cond.bad())
		return request_failed(a, params, cond, peer->called_ae, err);
	a.established = true;
	no_delay(a.assoc);
	return 0;
}

/* ---- proposing ---- */

/*
 * The contexts one item needs: its own syntax alone, so that a peer that
 * takes it gets the file as it is; and the uncompressed pair, shared by the
 * batch, for a native file (DCMTK re-encodes it without loss) or for
 * conversion when the destination allows it.
 */
std::vector<proposal> needs_of(const struct dimse_peer *peer,
			       const struct delivery_item *item)
{
	std::vector<proposal> out { { item->sop_class_uid,
				      { item->transfer_syntax_uid } } };

	if (native_syntax(item->transfer_syntax_uid) || peer->allow_conversion)
		out.push_back({ item->sop_class_uid,
				{ UID_LittleEndianExplicitTransferSyntax,
				  UID_LittleEndianImplicitTransferSyntax } });
	return out;
}

std::string key_of(const proposal &p)
{
	std::string k = p.sop;

	for (const std::string &s : p.syntaxes)
		k += "|" + s;
	return k;
}

/* The pending items that fit in one association, and its contexts. */
void plan_round(const struct dimse_peer *peer, struct delivery_item *items,
		size_t n, std::vector<size_t> &round, std::vector<proposal> &props)
{
	std::map<std::string, bool> have;

	for (size_t i = 0; i < n; i++) {
		std::vector<proposal> need;
		size_t fresh = 0;

		if (items[i].result != DELIVERY_PENDING)
			continue;
		need = needs_of(peer, &items[i]);
		for (const proposal &p : need)
			fresh += have.count(key_of(p)) ? 0 : 1;
		if (props.size() + fresh > MAX_CONTEXTS)
			continue;	/* the next association */
		for (const proposal &p : need)
			if (!have.count(key_of(p))) {
				have[key_of(p)] = true;
				props.push_back(p);
			}
		round.push_back(i);
	}
}

/*
 * A file DCMTK could not load. Every file queued was written and parsed by
 * our pipeline, so unless the file itself is gone or refused, the cause is
 * the machine's (out of file descriptors or memory, an I/O error): a retry,
 * never a rejection. open(2) tells which, as DCMTK's condition does not.
 */
void load_failed(struct delivery_item *item, const OFCondition &cond)
{
	int fd = open(item->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	int open_errno = errno;

	item->status = 0;
	if (fd == -1 && open_errno != ENOENT && open_errno != ELOOP) {
		set_reason(item, "the file could not be opened now (%s)",
			   strerror(open_errno));
		item->result = DELIVERY_RETRY;
		return;
	}
	if (fd != -1)
		close(fd);
	set_reason(item, "the file could not be read (%s)",
		   one_line(cond.text()).c_str());
	item->result = DELIVERY_REJECTED;
}

/* UIDs the caller left empty: read from the file's header. */
void fill_from_file(struct delivery_item *item)
{
	DcmFileFormat ff;
	OFCondition cond;
	OFString v;

	if (!item->path) {
		reject(item, 0, "no file");
		return;
	}
	if (item->sop_class_uid[0] && item->sop_instance_uid[0] &&
	    item->transfer_syntax_uid[0])
		return;
	cond = ff.loadFile(item->path, EXS_Unknown, EGL_noChange, 256,
			   ERM_fileOnly);
	if (cond.bad()) {
		load_failed(item, cond);
		return;
	}
	if (!item->sop_class_uid[0] &&
	    ff.getDataset()->findAndGetOFString(DCM_SOPClassUID, v).good())
		snprintf(item->sop_class_uid, DELIVERY_UID_MAX, "%s", v.c_str());
	if (!item->sop_instance_uid[0] &&
	    ff.getDataset()->findAndGetOFString(DCM_SOPInstanceUID, v).good())
		snprintf(item->sop_instance_uid, DELIVERY_UID_MAX, "%s", v.c_str());
	if (!item->transfer_syntax_uid[0])
		snprintf(item->transfer_syntax_uid, DELIVERY_UID_MAX, "%s",
			 DcmXfer(ff.getDataset()->getOriginalXfer()).getXferID());
	if (!item->sop_class_uid[0] || !item->sop_instance_uid[0])
		reject(item, 0, "the file has no SOP Class or SOP Instance UID");
}

/* ---- sending ---- */

/* What the peer made of item's SOP class, for a rejection's reason: the
 * syntaxes it accepted it in; ts_refused: it refused a syntax of it. */
std::string accepted_as(T_ASC_Association *assoc, const char *sop,
			bool &ts_refused)
{
	std::string out;
	int n = ASC_countPresentationContexts(assoc->params);

	ts_refused = false;
	for (int i = 0; i < n; i++) {
		T_ASC_PresentationContext pc;

		if (ASC_getPresentationContext(assoc->params, i, &pc).bad() ||
		    strcmp(pc.abstractSyntax, sop) != 0)
			continue;
		if (pc.resultReason == ASC_P_TRANSFERSYNTAXESNOTSUPPORTED)
			ts_refused = true;
		if (pc.resultReason == ASC_P_ACCEPTANCE &&
		    out.find(pc.acceptedTransferSyntax) == std::string::npos)
			out += (out.empty() ? "" : " ") +
			       std::string(pc.acceptedTransferSyntax);
	}
	return out;
}

/*
 * The accepted context to send ds in: its own syntax; for a native file
 * any native one (DCMTK re-encodes losslessly); else, if allowed, one DCMTK
 * can convert it to without loss. 0 if none.
 */
T_ASC_PresentationContextID choose_context(const struct dimse_peer *peer,
					   T_ASC_Association *assoc,
					   const char *sop, DcmDataset *ds)
{
	E_TransferSyntax own = ds->getOriginalXfer();
	bool native = !DcmXfer(own).isEncapsulated();
	int n = ASC_countPresentationContexts(assoc->params);
	T_ASC_PresentationContextID fallback = 0;

	for (int i = 0; i < n; i++) {
		T_ASC_PresentationContext pc;

		if (ASC_getPresentationContext(assoc->params, i, &pc).bad() ||
		    pc.resultReason != ASC_P_ACCEPTANCE ||
		    strcmp(pc.abstractSyntax, sop) != 0)
			continue;
		DcmXfer x(pc.acceptedTransferSyntax);
		if (x.getXfer() == own)
			return pc.presentationContextID;
		if (native && !x.isEncapsulated() && x.getXfer() != EXS_Unknown &&
		    !fallback)
			fallback = pc.presentationContextID;
	}
	if (fallback || !peer->allow_conversion)
		return fallback;
	for (int i = 0; i < n; i++) {
		T_ASC_PresentationContext pc;

		if (ASC_getPresentationContext(assoc->params, i, &pc).bad() ||
		    pc.resultReason != ASC_P_ACCEPTANCE ||
		    strcmp(pc.abstractSyntax, sop) != 0)
			continue;
		E_TransferSyntax x = DcmXfer(pc.acceptedTransferSyntax).getXfer();
		if (lossless_target(x) && ds->chooseRepresentation(x, nullptr).good()
		    && ds->canWriteXfer(x, own))
			return pc.presentationContextID;
	}
	return 0;
}

void no_context(const struct dimse_peer *peer, T_ASC_Association *assoc,
		struct delivery_item *item, E_TransferSyntax own)
{
	bool ts_refused;
	std::string as = accepted_as(assoc, item->sop_class_uid, ts_refused);
	const char *ts = DcmXfer(own).getXferID();
	const char *conversion = peer->allow_conversion ?
		"no lossless conversion to it is possible" : "conversion is not allowed";

	item->result = DELIVERY_REJECTED;
	item->status = 0;
	if (!as.empty())
		set_reason(item, "the peer accepts SOP class %s only in %s, not "
			   "in %s, and %s", item->sop_class_uid, as.c_str(), ts,
			   conversion);
	else if (ts_refused)
		set_reason(item, "the peer does not accept SOP class %s in %s, "
			   "and %s", item->sop_class_uid, ts, conversion);
	else
		set_reason(item, "the peer does not accept SOP class %s",
			   item->sop_class_uid);
}

/* A C-STORE that failed on our side or the wire: which one was it? */
bool file_reads_to_end(const char *path)
{
	DcmFileFormat ff;

	return ff.loadFile(path, EXS_Unknown, EGL_noChange, DCM_MaxReadLength,
			   ERM_fileOnly).good() && ff.loadAllDataIntoMemory().good();
}

enum sent { SENT, ASSOCIATION_SPOILT, ASSOCIATION_LOST };

/* One C-STORE; item gets a result unless the association was lost. */
enum sent send_one(const struct dimse_peer *peer, association &a,
		   struct delivery_item *item, struct error *err)
{
	DcmFileFormat ff;
	OFCondition cond;
	T_DIMSE_C_StoreRQ req;
	T_DIMSE_C_StoreRSP rsp;
	DcmDataset *detail = nullptr;
	T_ASC_PresentationContextID id;

	cond = ff.loadFile(item->path, EXS_Unknown, EGL_noChange,
			   DCM_MaxReadLength, ERM_fileOnly);
	if (cond.bad()) {
		load_failed(item, cond);
		return SENT;
	}
	id = choose_context(peer, a.assoc, item->sop_class_uid, ff.getDataset());
	if (id == 0) {
		no_context(peer, a.assoc, item, ff.getDataset()->getOriginalXfer());
		return SENT;
	}
	memset(&req, 0, sizeof(req));
	memset(&rsp, 0, sizeof(rsp));
	req.MessageID = a.assoc->nextMsgID++;
	OFStandard::strlcpy(req.AffectedSOPClassUID, item->sop_class_uid,
			    sizeof(req.AffectedSOPClassUID));
	OFStandard::strlcpy(req.AffectedSOPInstanceUID, item->sop_instance_uid,
			    sizeof(req.AffectedSOPInstanceUID));
	req.DataSetType = DIMSE_DATASET_PRESENT;
	req.Priority = DIMSE_PRIORITY_MEDIUM;
	cond = DIMSE_storeUser(a.assoc, id, &req, nullptr, ff.getDataset(),
			       nullptr, nullptr, DIMSE_NONBLOCKING, a.t.dimse,
			       &rsp, &detail, nullptr, 0);
	delete detail;	/* its ErrorComment is the peer's free text: not kept */
	if (cond.good()) {
		record_status(item, rsp.DimseStatus);
		return SENT;
	}
	a.abort();
	if (!file_reads_to_end(item->path)) {
		reject(item, 0, "the file could not be read to its end");
		return ASSOCIATION_SPOILT;
	}
	error_set(err, ERROR_TRANSIENT, 0, "peer %s: C-STORE failed (%s)",
		  a.peer.c_str(), one_line(cond.text()).c_str());
	return ASSOCIATION_LOST;
}

/* One association for the items that fit; 0, or -1 to retry the rest. */
int send_round(const struct dimse_peer *peer, struct delivery_item *items,
	       size_t n, struct error *err)
{
	std::vector<size_t> round;
	std::vector<proposal> props;
	association a;

	plan_round(peer, items, n, round, props);
	if (round.empty())	/* cannot happen: one item needs 2 contexts */
		return error_set(err, ERROR_SETUP, 0, "peer %s:%d: no item fits "
				 "an association", peer->host, peer->port);
	if (open_association(peer, props, a, err) == -1)
		return -1;
	for (size_t i : round) {
		switch (send_one(peer, a, &items[i], err)) {
		case SENT:
			continue;
		case ASSOCIATION_SPOILT:
			return 0;	/* the rest go in a new association */
		case ASSOCIATION_LOST:
			return -1;
		}
	}
	a.release();
	return 0;
}

bool any_pending(const struct delivery_item *items, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (items[i].result == DELIVERY_PENDING)
			return true;
	return false;
}

} // namespace

extern "C" int dimse_send(const struct dimse_peer *peer,
			  struct delivery_item *items, size_t n,
			  struct error *err)
{
	sigpipe_guard guard;

	try {
		if (check_peer(peer, err) == -1)
			return -1;
		for (size_t i = 0; i < n; i++)
			if (items[i].result == DELIVERY_PENDING)
				fill_from_file(&items[i]);
		/* One association, unless a batch needs more than 128
		 * contexts or a file spoilt one: each round answers at
		 * least one item or returns -1. */
		while (any_pending(items, n))
			if (send_round(peer, items, n, err) == -1)
				return -1;
		return 0;
	} catch (const std::bad_alloc &) {
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "DICOM send");
	} catch (...) {
		return error_set(err, ERROR_TRANSIENT, 0, "DICOM send: internal "
				 "error of the network library");
	}
}

extern "C" int dimse_echo(const struct dimse_peer *peer, struct error *err)
{
	sigpipe_guard guard;

	try {
		std::vector<proposal> props { { UID_VerificationSOPClass,
			{ UID_LittleEndianExplicitTransferSyntax,
			  UID_LittleEndianImplicitTransferSyntax } } };
		association a;
		DIC_US status = 0;
		DcmDataset *detail = nullptr;
		OFCondition cond;

		if (check_peer(peer, err) == -1 ||
		    open_association(peer, props, a, err) == -1)
			return -1;
		cond = DIMSE_echoUser(a.assoc, a.assoc->nextMsgID++,
				      DIMSE_NONBLOCKING, a.t.dimse, &status,
				      &detail);
		delete detail;
		if (cond.bad())
			return error_set(err, ERROR_TRANSIENT, 0, "peer %s: C-ECHO "
					 "failed (%s)", a.peer.c_str(),
					 one_line(cond.text()).c_str());
		a.release();
		if (status != 0)
			return error_set(err, ERROR_TRANSIENT, 0, "peer %s: C-ECHO "
					 "status 0x%04X", a.peer.c_str(), status);
		return 0;
	} catch (const std::bad_alloc &) {
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "DICOM echo");
	} catch (...) {
		return error_set(err, ERROR_TRANSIENT, 0, "DICOM echo: internal "
				 "error of the network library");
	}
}
