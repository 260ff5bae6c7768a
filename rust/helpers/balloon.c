// SPDX-License-Identifier: GPL-2.0

#include <linux/balloon.h>
#include <linux/mm.h>

__rust_helper void rust_helper_balloon_devinfo_init(struct balloon_dev_info *balloon)
{
	balloon_devinfo_init(balloon);
}

/* Links @page into the list @pages through page->lru, for balloon_page_list_enqueue(). */
__rust_helper void rust_helper_balloon_page_push(struct list_head *pages, struct page *page)
{
	list_add(&page->lru, pages);
}

/* Unlinks and returns the first page of @pages, or NULL when the list is empty. */
__rust_helper struct page *rust_helper_balloon_page_pop(struct list_head *pages)
{
	struct page *page = list_first_entry_or_null(pages, struct page, lru);

	if (page)
		list_del(&page->lru);
	return page;
}
