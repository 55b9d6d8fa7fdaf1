/*
 * Prints the kernel's FUSE ABI as JSON: sizeof and offsetof of every struct
 * field that src/pohmelfs/fuse/kernel.py encodes or decodes, and the values
 * of the opcodes and flags it uses, all taken from <linux/fuse.h> by the C
 * compiler. tests/test_fuse_kernel.py checks kernel.py against the output.
 *
 * Regenerate (from the repository root, with the kernel headers installed):
 *
 *   gcc -std=gnu11 -Wall -Wextra -Werror -o /tmp/fuse_layouts tools/fuse_layouts.c \
 *     && /tmp/fuse_layouts > tests/data/fuse_layouts.json
 *
 * Nested struct members are flattened with dotted names ("lk.start",
 * "entry_out.attr.ino"); arrays are one field with "count" elements of
 * "elem" bytes; a flexible array member (fuse_dirent.name) has size 0.
 */

#include <linux/fs.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <stdio.h>

/* Always false for unsigned members: that is the point. */
#pragma GCC diagnostic ignored "-Wtype-limits"
#define IS_SIGNED(x) ((__typeof__(x))-1 < 0)
#define MEMBER(S, f) (((struct S *)0)->f)

static int first_struct = 1;
static int first_field;
static int first_const = 1;

static void begin(const char *name, size_t size)
{
	printf("%s\n    \"%s\": {\"size\": %zu, \"fields\": [", first_struct ? "" : ",", name, size);
	first_struct = 0;
	first_field = 1;
}

static void field(const char *name, size_t offset, size_t size, size_t elem, int is_signed)
{
	printf("%s\n      {\"name\": \"", first_field ? "" : ",");
	for (; *name; name++)  /* "attr. ino" (a macro-built member path) -> "attr.ino" */
		if (*name != ' ')
			putchar(*name);
	printf("\", \"offset\": %zu, \"size\": %zu, \"count\": %zu, \"signed\": %s}", offset,
	       size, elem ? size / elem : 1, is_signed ? "true" : "false");
	first_field = 0;
}

static void end(void)
{
	printf("\n    ]}");
}

/* A scalar member (possibly nested: F(fuse_lk_in, lk.start)). */
#define F(S, f) field(#f, offsetof(struct S, f), sizeof(MEMBER(S, f)), 0, IS_SIGNED(MEMBER(S, f)))
/* An array member. */
#define A(S, f) \
	field(#f, offsetof(struct S, f), sizeof(MEMBER(S, f)), sizeof(MEMBER(S, f)[0]), \
	      IS_SIGNED(MEMBER(S, f)[0]))
/* A flexible array member: no size of its own. */
#define FLEX(S, f) field(#f, offsetof(struct S, f), 0, 0, 0)
#define S(name) begin(#name, sizeof(struct name))

#define ATTR_FIELDS(S, p) \
	F(S, p ino); F(S, p size); F(S, p blocks); F(S, p atime); F(S, p mtime); \
	F(S, p ctime); F(S, p atimensec); F(S, p mtimensec); F(S, p ctimensec); \
	F(S, p mode); F(S, p nlink); F(S, p uid); F(S, p gid); F(S, p rdev); \
	F(S, p blksize); F(S, p flags)
#define ENTRY_FIELDS(S, p) \
	F(S, p nodeid); F(S, p generation); F(S, p entry_valid); F(S, p attr_valid); \
	F(S, p entry_valid_nsec); F(S, p attr_valid_nsec); ATTR_FIELDS(S, p attr.)
#define LOCK_FIELDS(S, p) F(S, p start); F(S, p end); F(S, p type); F(S, p pid)

/* Constants come in groups: "constants", "opcodes", "notify_codes", "flags". */
static void group(const char *name)
{
	printf("\n  },\n  \"%s\": {", name);
	first_const = 1;
}

static void constant(const char *name, unsigned long long value)
{
	printf("%s\n    \"%s\": %llu", first_const ? "" : ",", name, value);
	first_const = 0;
}

#define C(name) constant(#name, (unsigned long long)(name))

static void structs(void)
{
	/* headers */
	S(fuse_in_header);
	F(fuse_in_header, len); F(fuse_in_header, opcode); F(fuse_in_header, unique);
	F(fuse_in_header, nodeid); F(fuse_in_header, uid); F(fuse_in_header, gid);
	F(fuse_in_header, pid); F(fuse_in_header, total_extlen); F(fuse_in_header, padding);
	end();
	S(fuse_out_header);
	F(fuse_out_header, len); F(fuse_out_header, error); F(fuse_out_header, unique);
	end();

	/* replies */
	S(fuse_attr); ATTR_FIELDS(fuse_attr, ); end();
	S(fuse_entry_out); ENTRY_FIELDS(fuse_entry_out, ); end();
	S(fuse_attr_out);
	F(fuse_attr_out, attr_valid); F(fuse_attr_out, attr_valid_nsec); F(fuse_attr_out, dummy);
	ATTR_FIELDS(fuse_attr_out, attr.);
	end();
	S(fuse_open_out);
	F(fuse_open_out, fh); F(fuse_open_out, open_flags); F(fuse_open_out, padding);
	end();
	S(fuse_write_out); F(fuse_write_out, size); F(fuse_write_out, padding); end();
	S(fuse_kstatfs);
	F(fuse_kstatfs, blocks); F(fuse_kstatfs, bfree); F(fuse_kstatfs, bavail);
	F(fuse_kstatfs, files); F(fuse_kstatfs, ffree); F(fuse_kstatfs, bsize);
	F(fuse_kstatfs, namelen); F(fuse_kstatfs, frsize); F(fuse_kstatfs, padding);
	A(fuse_kstatfs, spare);
	end();
	S(fuse_statfs_out);
	F(fuse_statfs_out, st.blocks); F(fuse_statfs_out, st.bfree); F(fuse_statfs_out, st.bavail);
	F(fuse_statfs_out, st.files); F(fuse_statfs_out, st.ffree); F(fuse_statfs_out, st.bsize);
	F(fuse_statfs_out, st.namelen); F(fuse_statfs_out, st.frsize);
	F(fuse_statfs_out, st.padding); A(fuse_statfs_out, st.spare);
	end();
	S(fuse_getxattr_out); F(fuse_getxattr_out, size); F(fuse_getxattr_out, padding); end();
	S(fuse_file_lock); LOCK_FIELDS(fuse_file_lock, ); end();
	S(fuse_lk_out); LOCK_FIELDS(fuse_lk_out, lk.); end();
	S(fuse_lseek_out); F(fuse_lseek_out, offset); end();
	S(fuse_init_out);
	F(fuse_init_out, major); F(fuse_init_out, minor); F(fuse_init_out, max_readahead);
	F(fuse_init_out, flags); F(fuse_init_out, max_background);
	F(fuse_init_out, congestion_threshold); F(fuse_init_out, max_write);
	F(fuse_init_out, time_gran); F(fuse_init_out, max_pages); F(fuse_init_out, map_alignment);
	F(fuse_init_out, flags2); A(fuse_init_out, unused);
	end();
	S(fuse_dirent);
	F(fuse_dirent, ino); F(fuse_dirent, off); F(fuse_dirent, namelen); F(fuse_dirent, type);
	FLEX(fuse_dirent, name);
	end();
	S(fuse_direntplus);
	ENTRY_FIELDS(fuse_direntplus, entry_out.);
	F(fuse_direntplus, dirent.ino); F(fuse_direntplus, dirent.off);
	F(fuse_direntplus, dirent.namelen); F(fuse_direntplus, dirent.type);
	FLEX(fuse_direntplus, dirent.name);
	end();

	/* notifications */
	S(fuse_notify_inval_inode_out);
	F(fuse_notify_inval_inode_out, ino); F(fuse_notify_inval_inode_out, off);
	F(fuse_notify_inval_inode_out, len);
	end();
	S(fuse_notify_inval_entry_out);
	F(fuse_notify_inval_entry_out, parent); F(fuse_notify_inval_entry_out, namelen);
	F(fuse_notify_inval_entry_out, flags);
	end();
	S(fuse_notify_delete_out);
	F(fuse_notify_delete_out, parent); F(fuse_notify_delete_out, child);
	F(fuse_notify_delete_out, namelen); F(fuse_notify_delete_out, padding);
	end();
	S(fuse_notify_store_out);
	F(fuse_notify_store_out, nodeid); F(fuse_notify_store_out, offset);
	F(fuse_notify_store_out, size); F(fuse_notify_store_out, padding);
	end();
	S(fuse_notify_retrieve_out);
	F(fuse_notify_retrieve_out, notify_unique); F(fuse_notify_retrieve_out, nodeid);
	F(fuse_notify_retrieve_out, offset); F(fuse_notify_retrieve_out, size);
	F(fuse_notify_retrieve_out, padding);
	end();

	/* request arguments */
	S(fuse_getattr_in);
	F(fuse_getattr_in, getattr_flags); F(fuse_getattr_in, dummy); F(fuse_getattr_in, fh);
	end();
	S(fuse_setattr_in);
	F(fuse_setattr_in, valid); F(fuse_setattr_in, padding); F(fuse_setattr_in, fh);
	F(fuse_setattr_in, size); F(fuse_setattr_in, lock_owner); F(fuse_setattr_in, atime);
	F(fuse_setattr_in, mtime); F(fuse_setattr_in, ctime); F(fuse_setattr_in, atimensec);
	F(fuse_setattr_in, mtimensec); F(fuse_setattr_in, ctimensec); F(fuse_setattr_in, mode);
	F(fuse_setattr_in, unused4); F(fuse_setattr_in, uid); F(fuse_setattr_in, gid);
	F(fuse_setattr_in, unused5);
	end();
	S(fuse_mknod_in);
	F(fuse_mknod_in, mode); F(fuse_mknod_in, rdev); F(fuse_mknod_in, umask);
	F(fuse_mknod_in, padding);
	end();
	S(fuse_mkdir_in); F(fuse_mkdir_in, mode); F(fuse_mkdir_in, umask); end();
	S(fuse_rename_in); F(fuse_rename_in, newdir); end();
	S(fuse_rename2_in);
	F(fuse_rename2_in, newdir); F(fuse_rename2_in, flags); F(fuse_rename2_in, padding);
	end();
	S(fuse_link_in); F(fuse_link_in, oldnodeid); end();
	S(fuse_open_in); F(fuse_open_in, flags); F(fuse_open_in, open_flags); end();
	S(fuse_create_in);
	F(fuse_create_in, flags); F(fuse_create_in, mode); F(fuse_create_in, umask);
	F(fuse_create_in, open_flags);
	end();
	S(fuse_release_in);
	F(fuse_release_in, fh); F(fuse_release_in, flags); F(fuse_release_in, release_flags);
	F(fuse_release_in, lock_owner);
	end();
	S(fuse_flush_in);
	F(fuse_flush_in, fh); F(fuse_flush_in, unused); F(fuse_flush_in, padding);
	F(fuse_flush_in, lock_owner);
	end();
	S(fuse_read_in);
	F(fuse_read_in, fh); F(fuse_read_in, offset); F(fuse_read_in, size);
	F(fuse_read_in, read_flags); F(fuse_read_in, lock_owner); F(fuse_read_in, flags);
	F(fuse_read_in, padding);
	end();
	S(fuse_write_in);
	F(fuse_write_in, fh); F(fuse_write_in, offset); F(fuse_write_in, size);
	F(fuse_write_in, write_flags); F(fuse_write_in, lock_owner); F(fuse_write_in, flags);
	F(fuse_write_in, padding);
	end();
	S(fuse_fsync_in);
	F(fuse_fsync_in, fh); F(fuse_fsync_in, fsync_flags); F(fuse_fsync_in, padding);
	end();
	S(fuse_setxattr_in);
	F(fuse_setxattr_in, size); F(fuse_setxattr_in, flags); F(fuse_setxattr_in, setxattr_flags);
	F(fuse_setxattr_in, padding);
	end();
	S(fuse_getxattr_in); F(fuse_getxattr_in, size); F(fuse_getxattr_in, padding); end();
	S(fuse_lk_in);
	F(fuse_lk_in, fh); F(fuse_lk_in, owner); LOCK_FIELDS(fuse_lk_in, lk.);
	F(fuse_lk_in, lk_flags); F(fuse_lk_in, padding);
	end();
	S(fuse_access_in); F(fuse_access_in, mask); F(fuse_access_in, padding); end();
	S(fuse_init_in);
	F(fuse_init_in, major); F(fuse_init_in, minor); F(fuse_init_in, max_readahead);
	F(fuse_init_in, flags); F(fuse_init_in, flags2); A(fuse_init_in, unused);
	end();
	S(fuse_interrupt_in); F(fuse_interrupt_in, unique); end();
	S(fuse_forget_in); F(fuse_forget_in, nlookup); end();
	S(fuse_batch_forget_in); F(fuse_batch_forget_in, count); F(fuse_batch_forget_in, dummy); end();
	S(fuse_forget_one); F(fuse_forget_one, nodeid); F(fuse_forget_one, nlookup); end();
	S(fuse_fallocate_in);
	F(fuse_fallocate_in, fh); F(fuse_fallocate_in, offset); F(fuse_fallocate_in, length);
	F(fuse_fallocate_in, mode); F(fuse_fallocate_in, padding);
	end();
	S(fuse_lseek_in);
	F(fuse_lseek_in, fh); F(fuse_lseek_in, offset); F(fuse_lseek_in, whence);
	F(fuse_lseek_in, padding);
	end();
	S(fuse_copy_file_range_in);
	F(fuse_copy_file_range_in, fh_in); F(fuse_copy_file_range_in, off_in);
	F(fuse_copy_file_range_in, nodeid_out); F(fuse_copy_file_range_in, fh_out);
	F(fuse_copy_file_range_in, off_out); F(fuse_copy_file_range_in, len);
	F(fuse_copy_file_range_in, flags);
	end();
	S(fuse_poll_in);
	F(fuse_poll_in, fh); F(fuse_poll_in, kh); F(fuse_poll_in, flags); F(fuse_poll_in, events);
	end();
	S(fuse_syncfs_in); F(fuse_syncfs_in, padding); end();
}

static void constants(void)
{
	C(FUSE_KERNEL_VERSION); C(FUSE_KERNEL_MINOR_VERSION); C(FUSE_ROOT_ID);
	C(FUSE_COMPAT_SETXATTR_IN_SIZE); C(FUSE_NAME_OFFSET); C(FUSE_NAME_OFFSET_DIRENTPLUS);
	C(FUSE_DEV_IOC_CLONE);

	group("opcodes");
	C(FUSE_LOOKUP); C(FUSE_FORGET); C(FUSE_GETATTR); C(FUSE_SETATTR); C(FUSE_READLINK);
	C(FUSE_SYMLINK); C(FUSE_MKNOD); C(FUSE_MKDIR); C(FUSE_UNLINK); C(FUSE_RMDIR);
	C(FUSE_RENAME); C(FUSE_LINK); C(FUSE_OPEN); C(FUSE_READ); C(FUSE_WRITE); C(FUSE_STATFS);
	C(FUSE_RELEASE); C(FUSE_FSYNC); C(FUSE_SETXATTR); C(FUSE_GETXATTR); C(FUSE_LISTXATTR);
	C(FUSE_REMOVEXATTR); C(FUSE_FLUSH); C(FUSE_INIT); C(FUSE_OPENDIR); C(FUSE_READDIR);
	C(FUSE_RELEASEDIR); C(FUSE_FSYNCDIR); C(FUSE_GETLK); C(FUSE_SETLK); C(FUSE_SETLKW);
	C(FUSE_ACCESS); C(FUSE_CREATE); C(FUSE_INTERRUPT); C(FUSE_BMAP); C(FUSE_DESTROY);
	C(FUSE_IOCTL); C(FUSE_POLL); C(FUSE_NOTIFY_REPLY); C(FUSE_BATCH_FORGET);
	C(FUSE_FALLOCATE); C(FUSE_READDIRPLUS); C(FUSE_RENAME2); C(FUSE_LSEEK);
	C(FUSE_COPY_FILE_RANGE); C(FUSE_SETUPMAPPING); C(FUSE_REMOVEMAPPING); C(FUSE_SYNCFS);
	C(FUSE_TMPFILE);

	group("notify_codes");
	C(FUSE_NOTIFY_POLL); C(FUSE_NOTIFY_INVAL_INODE); C(FUSE_NOTIFY_INVAL_ENTRY);
	C(FUSE_NOTIFY_STORE); C(FUSE_NOTIFY_RETRIEVE); C(FUSE_NOTIFY_DELETE);

	group("flags");
	/* INIT flags */
	C(FUSE_ASYNC_READ); C(FUSE_POSIX_LOCKS); C(FUSE_FILE_OPS); C(FUSE_ATOMIC_O_TRUNC);
	C(FUSE_EXPORT_SUPPORT); C(FUSE_BIG_WRITES); C(FUSE_DONT_MASK); C(FUSE_SPLICE_WRITE);
	C(FUSE_SPLICE_MOVE); C(FUSE_SPLICE_READ); C(FUSE_FLOCK_LOCKS); C(FUSE_HAS_IOCTL_DIR);
	C(FUSE_AUTO_INVAL_DATA); C(FUSE_DO_READDIRPLUS); C(FUSE_READDIRPLUS_AUTO);
	C(FUSE_ASYNC_DIO); C(FUSE_WRITEBACK_CACHE); C(FUSE_NO_OPEN_SUPPORT);
	C(FUSE_PARALLEL_DIROPS); C(FUSE_HANDLE_KILLPRIV); C(FUSE_POSIX_ACL); C(FUSE_ABORT_ERROR);
	C(FUSE_MAX_PAGES); C(FUSE_CACHE_SYMLINKS); C(FUSE_NO_OPENDIR_SUPPORT);
	C(FUSE_EXPLICIT_INVAL_DATA); C(FUSE_MAP_ALIGNMENT); C(FUSE_SUBMOUNTS);
	C(FUSE_HANDLE_KILLPRIV_V2); C(FUSE_SETXATTR_EXT); C(FUSE_INIT_EXT);
	C(FUSE_INIT_RESERVED); C(FUSE_SECURITY_CTX); C(FUSE_HAS_INODE_DAX);

	/* setattr valid bits */
	C(FATTR_MODE); C(FATTR_UID); C(FATTR_GID); C(FATTR_SIZE); C(FATTR_ATIME); C(FATTR_MTIME);
	C(FATTR_FH); C(FATTR_ATIME_NOW); C(FATTR_MTIME_NOW); C(FATTR_LOCKOWNER); C(FATTR_CTIME);
	C(FATTR_KILL_SUIDGID);

	/* open reply flags */
	C(FOPEN_DIRECT_IO); C(FOPEN_KEEP_CACHE); C(FOPEN_NONSEEKABLE); C(FOPEN_CACHE_DIR);
	C(FOPEN_STREAM); C(FOPEN_NOFLUSH); C(FOPEN_PARALLEL_DIRECT_WRITES);

	/* per-request flags */
	C(FUSE_RELEASE_FLUSH); C(FUSE_RELEASE_FLOCK_UNLOCK); C(FUSE_GETATTR_FH); C(FUSE_LK_FLOCK);
	C(FUSE_WRITE_CACHE); C(FUSE_WRITE_LOCKOWNER); C(FUSE_WRITE_KILL_SUIDGID);
	C(FUSE_READ_LOCKOWNER); C(FUSE_FSYNC_FDATASYNC); C(FUSE_OPEN_KILL_SUIDGID);
	C(FUSE_SETXATTR_ACL_KILL_SGID);

	/* renameat2(2) flags, as carried by RENAME2 */
	C(RENAME_NOREPLACE); C(RENAME_EXCHANGE); C(RENAME_WHITEOUT);
}

int main(void)
{
	printf("{\n  \"header\": \"linux/fuse.h %d.%d\",\n", FUSE_KERNEL_VERSION,
	       FUSE_KERNEL_MINOR_VERSION);
	printf("  \"structs\": {");
	structs();
	group("constants");
	constants();
	printf("\n  }\n}\n");
	return 0;
}
