/*
 * fuzz_stow.c - a hostile STOW-RS peer's answer (src/stow.c).
 *
 * Input: two bytes of HTTP status (big endian, taken modulo 600), then the
 * answer body. It is mapped onto a batch of four items, two of which share
 * a SOPInstanceUID, exactly as stow_send() maps a real answer. Whatever the
 * peer says: every item ends with a result (none left PENDING), -1 comes
 * with an error text, and each reason is one NUL-terminated line.
 * stow.c is included so its static mapping functions are reached without
 * widening delivery.h; no network, no files.
 */
#include "../src/stow.c"

#include "fuzz_common.h"

/* Not CHECK(): RelWithDebInfo defines NDEBUG. */
#define CHECK(c) do { if (!(c)) abort(); } while (0)

static const char *const uids[4] = {
	"1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.1",
};

static void check_item(const struct delivery_item *it)
{
	size_t len = strnlen(it->reason, sizeof(it->reason));

	CHECK(it->result == DELIVERY_DONE || it->result == DELIVERY_RETRY ||
	       it->result == DELIVERY_REJECTED);
	CHECK(len < sizeof(it->reason));
	CHECK(memchr(it->reason, '\n', len) == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct delivery_item items[4];
	size_t part_item[4] = { 0, 1, 2, 3 };
	off_t part_size[4] = { 0 };
	struct error err = ERROR_INIT;
	struct answer a = { NULL, 0, 0, answer_max(4), false };
	struct body b;
	long http;
	size_t i;
	int rc;

	if (size < 2)
		return 0;
	http = ((long)data[0] << 8 | data[1]) % 600;
	memset(items, 0, sizeof(items));
	for (i = 0; i < 4; i++)
		snprintf(items[i].sop_instance_uid,
			 sizeof(items[i].sop_instance_uid), "%s", uids[i]);
	memset(&b, 0, sizeof(b));
	b.items = items;
	b.part_item = part_item;
	b.part_size = part_size;
	b.nparts = 4;
	b.fd = -1;
	if (answer_write((char *)(uintptr_t)(data + 2), 1, size - 2, &a) !=
	    size - 2)
		return 0;
	rc = map_status(&b, http, "http://127.0.0.1:1", apply_answer(&b, &a),
			&err);
	free(a.buf);
	CHECK(rc == 0 || (rc == -1 && err.msg[0] != '\0'));
	for (i = 0; i < 4; i++)
		check_item(&items[i]);
	/* Two items with one UID always share their fate. */
	CHECK(items[0].result == items[3].result);
	return 0;
}
