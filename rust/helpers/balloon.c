// SPDX-License-Identifier: GPL-2.0

#include <linux/balloon.h>
#include <linux/mm.h>
#include <linux/vmstat.h>

__rust_helper void rust_helper_balloon_devinfo_init(struct balloon_dev_info *balloon)
{
	balloon_devinfo_init(balloon);
}

__rust_helper void rust_helper_put_page(struct page *page)
{
	put_page(page);
}

__rust_helper unsigned long rust_helper_page_to_pfn(const struct page *page)
{
	return page_to_pfn(page);
}

__rust_helper void *rust_helper_page_address(const struct page *page)
{
	return page_address(page);
}

__rust_helper unsigned long rust_helper_global_node_page_state(enum node_stat_item item)
{
	return global_node_page_state(item);
}

__rust_helper bool rust_helper_want_init_on_free(void)
{
	return want_init_on_free();
}

__rust_helper bool rust_helper_page_poisoning_enabled_static(void)
{
	return page_poisoning_enabled_static();
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
