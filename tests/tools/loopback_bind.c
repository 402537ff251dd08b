/*
 * loopback_bind.so - test-only LD_PRELOAD shim: every bind() to the
 * wildcard address binds to loopback instead.
 *
 * Orthanc 1.10 has no option for its listening address: CivetWeb gets
 * "listening_ports" from HttpPort alone and the DICOM server binds
 * INADDR_ANY. RemoteAccessAllowed=false refuses remote HTTP clients but the
 * sockets are still open on every interface. The tests start Orthanc with
 * this shim so that a peer they start is reachable from 127.0.0.1/::1 only
 * (tests/forward/orthanc.py checks its sockets afterwards). Never installed.
 */
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

int bind(int fd, const struct sockaddr *addr, socklen_t len);

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	int (*next)(int, const struct sockaddr *, socklen_t);
	struct sockaddr_in in4;
	struct sockaddr_in6 in6;

	*(void **)&next = dlsym(RTLD_NEXT, "bind");
	if (next == NULL)
		return -1;
	if (addr != NULL && addr->sa_family == AF_INET &&
	    len >= sizeof(in4)) {
		memcpy(&in4, addr, sizeof(in4));
		if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
			in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			return next(fd, (struct sockaddr *)&in4, sizeof(in4));
		}
	}
	if (addr != NULL && addr->sa_family == AF_INET6 &&
	    len >= sizeof(in6)) {
		memcpy(&in6, addr, sizeof(in6));
		if (memcmp(&in6.sin6_addr, &in6addr_any,
			   sizeof(in6addr_any)) == 0) {
			in6.sin6_addr = in6addr_loopback;
			return next(fd, (struct sockaddr *)&in6, sizeof(in6));
		}
	}
	return next(fd, addr, len);
}
