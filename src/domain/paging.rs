//! Paging of the admin listings (users, audit log): by `offset`, as the seed's clients page, or
//! by keyset, where a page token names the last row of the previous page and the next page is
//! the rows past it in the listing's order. A keyset page costs the same at any depth (an index
//! seek), and pages asked that way see every row that exists throughout exactly once, whatever
//! is inserted or deleted between them; an offset page costs the rows it skips, and shifts when
//! rows before it come or go.
//!
//! A token is the listing's letter and the last id, in decimal (`u1234`, `a98765`): opaque to
//! clients (they pass back what an answer gave), exact to check, and tied to one listing.

use crate::error::{Error, Result};

pub const PAGE_DEFAULT: i64 = 50;
pub const PAGE_MAX: i64 = 200;
/// Most digits of the id in a token: any 18-digit number fits an `i64`.
pub const TOKEN_ID_DIGITS: usize = 18;

/// A listing that pages by keyset, and the letter its tokens start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Users by id, ascending: a page starts after the token's id.
    Users,
    /// Audit rows by id, descending (newest first): a page starts below the token's id.
    Audit,
}

impl Listing {
    pub const fn letter(self) -> char {
        match self {
            Self::Users => 'u',
            Self::Audit => 'a',
        }
    }

    /// The token of a page that starts past `last_id`.
    pub fn token(self, last_id: i64) -> String {
        format!("{}{last_id}", self.letter())
    }

    /// The regular expression of this listing's tokens, or the empty string (the first page).
    pub fn token_pattern(self) -> String {
        format!("^({}(0|[1-9][0-9]{{0,{}}}))?$", self.letter(), TOKEN_ID_DIGITS - 1)
    }

    /// The id a token names; `None` for anything a listing of this kind never gave.
    fn parse_token(self, token: &str) -> Option<i64> {
        let digits = token.strip_prefix(self.letter())?;
        let canonical = digits == "0" || (!digits.starts_with('0') && digits.len() <= TOKEN_ID_DIGITS);
        (canonical && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
    }
}

/// A checked page request: `limit` in 1..=[`PAGE_MAX`], then skip `offset` rows, past the row
/// whose id is `after` (in the listing's order) when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
    pub after: Option<i64>,
}

impl Page {
    /// Checks `limit` (0 means [`PAGE_DEFAULT`]), `offset` and `token` (empty: none) of a request
    /// to `listing`. An offset beside a token skips rows past the token's (clients have no
    /// reason to: it costs the rows skipped again).
    pub fn parse(listing: Listing, limit: i64, offset: i64, token: &str) -> Result<Self> {
        let (limit, offset) = page(limit, offset)?;
        if token.is_empty() {
            return Ok(Self { limit, offset, after: None });
        }
        let after = listing
            .parse_token(token)
            .ok_or_else(|| Error::invalid("page_token", "is not a next_page_token of this listing"))?;
        Ok(Self { limit, offset, after: Some(after) })
    }

    /// Whether this page counts the matches of every page: only without a token, because a
    /// count costs every match and a keyset page otherwise costs only its own rows.
    pub fn counts_total(self) -> bool {
        self.after.is_none()
    }
}

/// One page of a listing: its rows, the number of matches in all pages (when counted), and the
/// token of the next page (none on the last).
#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub total: Option<i64>,
    pub next_page_token: Option<String>,
}

impl<T> Paged<T> {
    /// From up to `page.limit + 1` rows fetched for `page`: the extra one only says that a next
    /// page exists. `id` gives a row's key in the listing's order.
    pub fn from_rows(
        listing: Listing,
        page: Page,
        mut rows: Vec<T>,
        total: Option<i64>,
        id: impl Fn(&T) -> i64,
    ) -> Self {
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > page.limit;
        rows.truncate(usize::try_from(page.limit).unwrap_or(usize::MAX));
        let next_page_token = rows.last().filter(|_| more).map(|last| listing.token(id(last)));
        Self { rows, total, next_page_token }
    }
}

/// Validates `limit` (0 means the default) and `offset` of a listing.
pub(crate) fn page(limit: i64, offset: i64) -> Result<(i64, i64)> {
    let limit = if limit == 0 { PAGE_DEFAULT } else { limit };
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Error::invalid("limit", "must be between 1 and 200"));
    }
    if offset < 0 {
        return Err(Error::invalid("offset", "must not be negative"));
    }
    Ok((limit, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_nothing_else_parses() {
        for (listing, id) in [(Listing::Users, 0), (Listing::Users, 1), (Listing::Audit, 999_999_999_999_999_999)] {
            let token = listing.token(id);
            assert!(regex::Regex::new(&listing.token_pattern()).unwrap().is_match(&token));
            assert_eq!(Page::parse(listing, 0, 0, &token).unwrap().after, Some(id));
        }
        let bad = ["u", "a1", "u01", "u-1", "u+1", "U1", " u1", "u1 ", "u1x", "u1000000000000000000", "u１"];
        for token in bad {
            let refused = Page::parse(Listing::Users, 0, 0, token).unwrap_err();
            assert!(matches!(refused, Error::InvalidArgument { ref field, .. } if field == "page_token"), "{token}");
            assert!(!regex::Regex::new(&Listing::Users.token_pattern()).unwrap().is_match(token), "{token}");
        }
        assert_eq!(
            Page::parse(Listing::Audit, 0, 3, "a7").unwrap(),
            Page { limit: PAGE_DEFAULT, offset: 3, after: Some(7) }
        );
        assert_eq!(
            Page::parse(Listing::Audit, 0, 3, "").unwrap(),
            Page { limit: PAGE_DEFAULT, offset: 3, after: None }
        );
    }

    #[test]
    fn the_extra_row_only_says_more() {
        let page = Page { limit: 2, offset: 0, after: None };
        let full = Paged::from_rows(Listing::Users, page, vec![4, 7, 9], Some(3), |r| *r);
        assert_eq!((full.rows, full.next_page_token), (vec![4, 7], Some("u7".to_owned())));
        let last = Paged::from_rows(Listing::Users, page, vec![4, 7], None, |r| *r);
        assert_eq!((last.rows, last.next_page_token), (vec![4, 7], None));
    }
}
