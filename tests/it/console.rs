//! The collector's web console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver by fantoccini), during a real rollout: canary nodes
//! install, one fails with output that holds a `<script>` tag, the console shows the broad gate
//! refusing; a fixed release passes the gate and the console prints the command that approves it.
//! Screenshots go to `$CARGO_TARGET_TMPDIR/console-screenshots/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::fleet::{Node, free_port, make_fleet_keys, wait_until};
use crate::rollout::{INSTALL_OK, ROLLBACK, approve, release};
use crate::support::{bin, cannot_run};

/// Fails on the host named kiosk-3, with output that tries to run a script in the console.
const INSTALL_FAILS_ON_KIOSK: &str = r#"case "$LANPATCH_HOSTNAME" in
kiosk-3)
  echo "checking the payment terminal"
  echo "<script>window.pwned = 1</script><b>bold</b>"
  echo "kiosk-3: payment terminal busy, refusing to restart" >&2
  exit 3;;
esac
echo "tool $LANPATCH_VERSION" > "$LANPATCH_DATA/installed-tool"
echo installed fine
"#;

/// chromedriver, stopped (by its PID) when dropped; the browser ends with the session.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(dir: &Path) -> Option<Driver> {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(tool).exists() {
            cannot_run(&format!("{tool} is missing (Debian packages chromium and chromium-driver)"));
            return None;
        }
    }
    let port = free_port();
    let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn chromedriver");
    let driver = Driver { child, port };
    wait_until(Duration::from_secs(30), "chromedriver listens", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    Some(driver)
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("start a Chromium session")
}

/// Loads `url` until `cond` holds on the page's text (the console's data comes from gossip: the
/// page is reloaded until the reports are there). Returns the text.
async fn wait_for_page(c: &Client, url: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    wait_for_text(c, url, "body", what, cond).await
}

/// Loads `url` until `cond` holds on the text of the element `css` selects (whitespace runs
/// made single spaces). Returns the text.
async fn wait_for_text(c: &Client, url: &str, css: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        c.goto(url).await.expect("load page");
        // Not there yet, or gone stale under a reload: read again on the next round.
        let text = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.map(|t| t.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default(),
            Err(_) => String::new(),
        };
        if cond(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} at {url}; page:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The text of the element `css` selects. Live pages reload themselves (`refresh`): an element
/// found just before a reload is stale by the time its text is read, so that is tried again.
async fn text_of(c: &Client, css: &str) -> String {
    let mut tries = 0;
    loop {
        let e = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        match e.text().await {
            Ok(t) => return t,
            Err(err) if tries < 10 => {
                tries += 1;
                eprintln!("{css}: {err}; reading it again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("{css}: {err}"),
        }
    }
}

async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(&path, png).unwrap();
    path
}

/// One HTTP/1.1 GET on loopback without a browser: the status line and the headers.
fn raw_get(addr: &str, path: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn console_url(admin: &Node) -> String {
    let out = Command::new(bin("lanpatch-node"))
        .args(["console-url", "--config"])
        .arg(&admin.config)
        .output()
        .expect("spawn lanpatch-node console-url");
    assert!(out.status.success(), "console-url: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn console_shows_a_live_rollout_the_gate_verdicts_and_failing_output_as_text_and_refuses_requests_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(driver) = start_driver(dir) else { return };
    make_fleet_keys(dir);
    let v1 = release(dir, "v1", 1, INSTALL_FAILS_ON_KIOSK, ROLLBACK, &["--target-tag", "endpoint"]);
    let mut admin = Node::new(
        dir,
        "admin",
        &dir.join("root.lpr"),
        &[],
        "collector = true\nring = \"admin\"\nhostname = \"admin-ws\"\nconsole_listen = \"127.0.0.1:0\"\nrollout_rings = [\"canary\", \"broad\"]",
    );
    admin.start();
    let endpoint = |name: &str, ring: &str, tags: &str, wrapper: Option<Vec<String>>| {
        let mut n = Node::new(
            dir,
            name,
            &dir.join("root.lpr"),
            &[admin.port],
            &format!("ring = \"{ring}\"\nhostname = \"{name}\"\ntags = [{tags}]"),
        );
        n.wrapper = wrapper;
        n.start();
        n
    };
    // kiosk-3 waits for a reboot and holds three packages: as root, its inventory reads a
    // directory of ours as /run and a status file of ours as dpkg's (a private mount namespace).
    let fake_host = crate::support::is_root() && Path::new("/var/lib/dpkg/status").exists();
    let kiosk_wrapper = fake_host.then(|| fake_run_and_packages(dir, "kiosk-3"));
    let till = endpoint("till-1", "canary", "\"endpoint\"", None);
    let kiosk = endpoint("kiosk-3", "canary", "\"endpoint\", \"kiosk\"", kiosk_wrapper);
    let broad = endpoint("office-7", "broad", "\"endpoint\"", None);
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 3);

    let addr = admin.status().console.expect("the console address in status");
    let url = console_url(&admin);
    assert!(url.starts_with(&format!("http://{addr}/login?token=")), "{url}");

    // Without the token, or with a wrong one, nothing but the refusal.
    let plain = raw_get(&addr, "/rollouts", "");
    assert!(plain.starts_with("HTTP/1.1 401"), "{plain}");
    assert!(plain.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"), "{plain}");
    let wrong = raw_get(&addr, "/", &format!("Cookie: lanpatch_session={}\r\n", "0".repeat(64)));
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let token = url.rsplit('=').next().unwrap();
    let bearer = raw_get(&addr, "/", &format!("Authorization: Bearer {token}\r\n"));
    assert!(bearer.starts_with("HTTP/1.1 200"), "{bearer}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(&driver, &dir.join("chromium-profile")).await;
        let base = format!("http://{addr}");
        c.goto(&format!("{base}/rollouts")).await.unwrap();
        let refused = text_of(&c, "body").await;
        assert!(refused.contains("Refused: this page needs a session"), "{refused}");
        // The refusal is styled like every page and says how to get a new link.
        assert!(
            refused.contains("sudo lanpatch-node console-url") && refused.contains("console-url --rotate"),
            "{refused}"
        );
        assert_eq!(header_colour(&c).await, "rgb(29, 35, 48)", "the refusal page has no stylesheet");
        screenshot(&c, "refused").await;
        c.goto(&format!("{base}/login?token={}", "f".repeat(64))).await.unwrap();
        assert!(text_of(&c, "body").await.contains("Refused: the token is wrong"));

        // The link from console-url logs in (an HttpOnly cookie) and lands on the fleet page.
        c.goto(&url).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/");
        let fleet = wait_for_page(&c, &format!("{base}/"), "every node's inventory", |t| {
            ["till-1", "kiosk-3", "office-7", "admin-ws"].iter().all(|h| t.contains(h))
                && t.contains(env!("CARGO_PKG_VERSION"))
        })
        .await;
        assert!(fleet.contains("4 node(s)"), "{fleet}");
        let cookie_visible: bool =
            c.execute("return document.cookie.includes('lanpatch_session')", vec![]).await.unwrap().as_bool().unwrap();
        assert!(!cookie_visible, "the session cookie must be HttpOnly");

        // The fleet links each host to its page: facts, reboot flag, packages by name.
        c.find(Locator::LinkText("kiosk-3")).await.unwrap().click().await.unwrap();
        let kiosk_page = format!("/hosts/{}", kiosk.node_key());
        assert_eq!(c.current_url().await.unwrap().path(), kiosk_page);
        let host = text_of(&c, "#host").await;
        assert!(
            host.contains("canary") && host.contains("endpoint, kiosk") && host.contains(env!("CARGO_PKG_VERSION")),
            "{host}"
        );
        if fake_host {
            let reboot = text_of(&c, "#reboot").await;
            assert!(reboot.contains("reboot required for libc6, linux-image-6.1.0-30-amd64"), "{reboot}");
            let names = texts_of(&c, "#packages tbody tr td:first-child").await;
            assert_eq!(names, ["libc6", "openssh-client", "zlib1g"], "packages by name");
            c.goto(&format!("{base}{kiosk_page}?package=SSH")).await.unwrap();
            assert_eq!(texts_of(&c, "#packages tbody tr td:first-child").await, ["openssh-client"]);
            assert_eq!(text_of(&c, "#package-count").await, "1 of 3 package(s), by name.");
        }
        // An unknown key: a styled 404; not a key at all: a 400.
        c.goto(&format!("{base}/hosts/{}", "ab".repeat(32))).await.unwrap();
        assert!(text_of(&c, "main").await.contains("has reported to this collector"));
        assert_eq!(header_colour(&c).await, "rgb(29, 35, 48)");
        let bearer_h = format!("Authorization: Bearer {token}\r\n");
        assert!(raw_get(&addr, &format!("/hosts/{}", "ab".repeat(32)), &bearer_h).starts_with("HTTP/1.1 404"));
        assert!(raw_get(&addr, "/hosts/kiosk-3", &bearer_h).starts_with("HTTP/1.1 400"));

        approve(dir, &v1, "canary", &[]).ok();
        admin.publish(&v1);
        let rollouts = format!("{base}/rollouts?refresh=0");
        // The canary row: one installed, one failed; the verdict names the failing host.
        wait_for_text(&c, &rollouts, "tr[data-ring='canary']", "canary results", |t| t == "canary 1 1 0 0 0 0 0 0 0")
            .await;
        let verdict = text_of(&c, ".verdict.refused").await;
        assert!(verdict.contains("ring canary has 1 failed install(s): kiosk-3"), "{verdict}");
        assert!(verdict.contains("payment terminal busy"), "{verdict}");
        // The signed rollout rules (the signer's defaults) and the rate every canary node computes.
        let rules = text_of(&c, "p.rules[data-ring='canary']").await;
        assert!(rules.contains("halt above 5 % failed") && rules.contains("1 of 2 outcomes failed"), "{rules}");
        screenshot(&c, "rollouts-refused").await;

        // The release page: per-node states, the failing node's output as text, the fan-out.
        let v1_hash = release_hash(&c).await;
        c.goto(&format!("{base}/release/{v1_hash}?refresh=0")).await.unwrap();
        let output = text_of(&c, "section.failure[data-host='kiosk-3'] pre.output").await;
        assert!(output.contains("<script>window.pwned = 1</script><b>bold</b>"), "{output}");
        assert!(output.contains("payment terminal busy, refusing to restart"), "{output}");
        let pwned = c.execute("return typeof window.pwned", vec![]).await.unwrap();
        assert_eq!(pwned.as_str(), Some("undefined"), "node output ran as script");
        let bold = c.find_all(Locator::Css("pre.output b")).await.unwrap();
        assert!(bold.is_empty(), "node output became markup");
        let till_row = text_of(&c, "#nodes tr[data-host='till-1']").await;
        assert!(till_row.contains("installed"), "{till_row}");
        let fanout = text_of(&c, "#fanout").await;
        assert!(fanout.contains("from other hosts") && fanout.contains("% of what the nodes fetched"), "{fanout}");
        let progress = c.find(Locator::Css("#nodes tr[data-host='till-1'] progress")).await.unwrap();
        assert_eq!(progress.attr("value").await.unwrap(), progress.attr("max").await.unwrap());
        // The headline, first on the page: what the seed (this collector, where v1 was
        // published) uploaded, in copies of the release, and what the peers carried.
        let release_url = format!("{base}/release/{v1_hash}?refresh=0");
        let headline =
            wait_for_text(&c, &release_url, "#headline", "three hosts downloaded v1", |t| t.contains("for 3 host(s)"))
                .await;
        let first = c.find(Locator::Css("main > h1 + *")).await.unwrap();
        assert_eq!(first.attr("id").await.unwrap().as_deref(), Some("headline"), "the headline comes first");
        let copies: f64 = headline
            .strip_prefix("The admin uploaded ")
            .and_then(|t| t.split(" copies").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{headline}"));
        // No origin: every byte a host holds left the seed at least once.
        assert!(copies >= 1.0, "{headline}");
        assert!(headline.contains("MiB) for 3 host(s); peers carried") && headline.ends_with(" %."), "{headline}");
        // The yank lines: one per approve key the threshold (2) asks for, the first with the
        // reason, then the publish.
        let yank = text_of(&c, "#yank").await;
        let v1_yank: Vec<String> = yank.lines().map(str::to_string).collect();
        assert_eq!(
            v1_yank,
            [
                "lanpatch-signer yank --key <approve key 1 of 2> --reason \"<why>\" <bundle of tool 1>".to_string(),
                "lanpatch-signer yank --key <approve key 2 of 2> <bundle of tool 1>".to_string(),
                format!("lanpatch-signer publish --node {} <bundle of tool 1>", admin.socket().display()),
            ]
        );
        screenshot(&c, "release-failing").await;

        // kiosk-3's page: v1 failed there, with its output (as text) and the time.
        c.goto(&format!("{base}{kiosk_page}")).await.unwrap();
        let row = text_of(&c, "#history tr[data-release='tool 1']").await;
        // The state, what the admin does about it, the exit code, when.
        assert!(row.contains("rolled back (install failed)\nNext: read the output tail"), "{row}");
        assert!(row.contains("(or yank) 3") && row.contains("ago"), "{row}");
        let out = text_of(&c, "section.failure[data-release='tool 1'] pre.output").await;
        assert!(out.contains("<script>window.pwned = 1</script>") && out.contains("payment terminal busy"), "{out}");
        assert_eq!(c.execute("return typeof window.pwned", vec![]).await.unwrap().as_str(), Some("undefined"));
        screenshot(&c, "host").await;

        // A fixed release: both canaries install, the gate for broad would pass, and the console
        // prints the command; running it installs broad, and the console says every ring is done.
        let v2 = release(dir, "v2", 2, INSTALL_OK, ROLLBACK, &["--target-tag", "endpoint"]);
        approve(dir, &v2, "canary", &[]).ok();
        admin.publish(&v2);
        wait_for_page(&c, &rollouts, "v2's canary results", |t| t.contains("Gate for broad: would pass")).await;
        // The status filter: v1 failed, v2 is on its way (broad waits for its approval).
        wait_for_titles(&c, &format!("{rollouts}&status=failed"), &["tool 1"]).await;
        wait_for_titles(&c, &format!("{rollouts}&status=active"), &["tool 2"]).await;
        wait_for_titles(&c, &format!("{rollouts}&status=done"), &[]).await;
        wait_for_titles(&c, &format!("{rollouts}&ring=broad"), &["tool 2", "tool 1"]).await;
        c.goto(&rollouts).await.unwrap();
        let command = text_of(&c, ".verdict.pass + pre.command").await;
        assert!(
            command.contains("lanpatch-signer approve --key <approve key 1 of 2> --ring broad --rings canary,broad"),
            "{command}"
        );
        assert!(command.contains(&format!("--node {}", admin.socket().display())), "{command}");
        screenshot(&c, "rollouts").await;
        // The approve threshold is 2: the printed commands are two approvals, then the publish.
        // Run exactly them, Bob's and Carol's keys in the placeholders.
        let lines: Vec<&str> = command.lines().collect();
        assert_eq!(lines.len(), 3, "{command}");
        for line in lines {
            let line = line
                .replace("<approve key 1 of 2>", "bob.key")
                .replace("<approve key 2 of 2>", "carol.key")
                .replace("<bundle of tool 2>", &v2.display().to_string());
            let argv: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(argv[0], "lanpatch-signer", "{line}");
            crate::support::signer(dir, &argv[1..]).ok();
        }
        wait_until(Duration::from_secs(90), "broad installs v2", || {
            broad.release_state("tool", 2) == Some(lanpatch_protocol::ReleaseState::Installed)
        });
        wait_for_page(&c, &rollouts, "every ring approved", |t| t.contains("Approved for every ring")).await;
        wait_for_titles(&c, &format!("{rollouts}&status=done"), &["tool 2"]).await;

        // Withdraw v1 with exactly the printed yank lines (Bob's and Carol's keys): the console
        // shows it yanked, done, and prints no yank lines for it any more.
        for line in &v1_yank {
            let line = line
                .replace("<approve key 1 of 2>", "bob.key")
                .replace("<approve key 2 of 2>", "carol.key")
                .replace("\"<why>\"", "fails-on-kiosks")
                .replace("<bundle of tool 1>", &v1.display().to_string());
            let argv: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(argv[0], "lanpatch-signer", "{line}");
            crate::support::signer(dir, &argv[1..]).ok();
        }
        wait_for_titles(&c, &format!("{rollouts}&status=done"), &["tool 2", "tool 1"]).await;
        assert!(text_of(&c, &format!("section#release-{v1_hash} h2")).await.contains("yanked"));
        c.goto(&format!("{base}/release/{v1_hash}?refresh=0")).await.unwrap();
        assert!(c.find_all(Locator::Css("#yank")).await.unwrap().is_empty(), "yank lines for a yanked release");

        // Inventory search: the tag filter.
        c.goto(&format!("{base}/inventory?tag=kiosk")).await.unwrap();
        let found = text_of(&c, "#inventory tbody").await;
        assert!(found.contains("kiosk-3") && !found.contains("till-1"), "{found}");
        c.close().await.unwrap();
    });
    drop((till, kiosk, broad));
}

#[test]
fn the_rollouts_page_lists_twenty_releases_a_page_newest_first_keeps_its_filters_across_pages_and_answers_bad_filters_with_a_400_page()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(driver) = start_driver(dir) else { return };
    make_fleet_keys(dir);
    let admin = crate::fleet::admin(dir, "console_listen = \"127.0.0.1:0\"\nrollout_rings = [\"canary\", \"broad\"]");
    // 3 versions of agent, then (a second later, so no creation time ties) 22 of tool: 25
    // releases, two pages. Newest first puts tool before agent, against the alphabet.
    let mut bundles = Vec::new();
    for v in 1..=3 {
        bundles.push(small_release(dir, "agent", v));
    }
    let secs = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let agents_done = secs();
    while secs() == agents_done {
        std::thread::sleep(Duration::from_millis(20));
    }
    for v in 1..=22 {
        bundles.push(small_release(dir, "tool", v));
    }
    for b in &bundles {
        admin.publish(b);
    }
    let url = console_url(&admin);
    let base = url.split("/login").next().unwrap().to_string();
    let token = url.rsplit('=').next().unwrap().to_string();
    let addr = base.trim_start_matches("http://").to_string();

    // Bad values: a 400 page that names each problem, its text escaped.
    let bearer = format!("Authorization: Bearer {token}\r\n");
    for (query, says) in [
        ("status=bogus", "status &quot;bogus&quot; is none of active, halted, failed, done"),
        ("page=0", "page &quot;0&quot; is not a page number"),
        ("page=two", "page &quot;two&quot; is not a page number"),
        ("product=%3Cb%3Ex%3C%2Fb%3E", "product: product name &quot;&lt;b&gt;x&lt;/b&gt;&quot; contains"),
        ("ring=a%20b&refresh=soon", "ring: ring name &quot;a b&quot;"),
        ("page=3", "page 3 is past the last page (2)"),
    ] {
        let resp = raw_get(&addr, &format!("/rollouts?{query}"), &bearer);
        assert!(resp.starts_with("HTTP/1.1 400"), "{query}: {resp}");
        assert!(resp.contains(says), "{query}: {resp}");
        assert!(!resp.contains("<b>x"), "{query}: {resp}");
    }
    let zero = "00".repeat(32);
    for (path, code, says) in [
        ("/release/zz".to_string(), "400", "not a manifest hash"),
        (format!("/release/{zero}?refresh=soon"), "400", "refresh &quot;soon&quot; is not a number of seconds"),
        (format!("/release/{zero}"), "404", "knows no release with the manifest"),
    ] {
        let resp = raw_get(&addr, &path, &bearer);
        assert!(resp.starts_with(&format!("HTTP/1.1 {code}")) && resp.contains(says), "{path}: {resp}");
    }
    let both = raw_get(&addr, "/rollouts?ring=a%20b&refresh=soon", &bearer);
    assert!(both.contains("refresh &quot;soon&quot; is not a number of seconds"), "every problem is named: {both}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(&driver, &dir.join("chromium-profile")).await;
        c.goto(&url).await.unwrap();
        let all = format!("{base}/rollouts?refresh=0");
        wait_for_text(&c, &all, "#rollouts-summary", "25 releases", |t| t == "Releases 1–20 of 25, newest first.")
            .await;
        let page1 = release_titles(&c, &all).await;
        let newest: Vec<String> = (3..=22).rev().map(|v| format!("tool {v}")).collect();
        assert_eq!(page1, newest);
        // Older: the five oldest; no further page.
        c.find(Locator::Css("nav.pager a.next")).await.unwrap().click().await.unwrap();
        assert_eq!(texts_of(&c, "section.release h2 a").await, ["tool 2", "tool 1", "agent 3", "agent 2", "agent 1"]);
        assert!(c.find_all(Locator::Css("a.next")).await.unwrap().is_empty());

        // The product filter, chosen in the form, is kept by the page links both ways.
        c.goto(&all).await.unwrap();
        c.find(Locator::Css("select[name='product'] option[value='tool']")).await.unwrap().click().await.unwrap();
        c.find(Locator::Css("#filters button")).await.unwrap().click().await.unwrap();
        assert_eq!(text_of(&c, "#rollouts-summary").await, "Releases 1–20 of 22 matching (25 known), newest first.");
        assert_eq!(texts_of(&c, "section.release h2 a").await.first().map(String::as_str), Some("tool 22"));
        screenshot(&c, "rollouts-filtered").await;
        c.find(Locator::Css("nav.pager a.next")).await.unwrap().click().await.unwrap();
        let at = c.current_url().await.unwrap();
        assert!(at.query().is_some_and(|q| q.contains("product=tool") && q.contains("page=2")), "{at}");
        assert_eq!(texts_of(&c, "section.release h2 a").await, ["tool 2", "tool 1"]);
        c.find(Locator::Css("nav.pager a.prev")).await.unwrap().click().await.unwrap();
        assert_eq!(text_of(&c, "#rollouts-summary").await, "Releases 1–20 of 22 matching (25 known), newest first.");
        // Nothing has halted; agent alone is one page.
        let halted = format!("{base}/rollouts?refresh=0&status=halted");
        c.goto(&halted).await.unwrap();
        assert_eq!(text_of(&c, "#rollouts-summary").await, "No release matches these filters.");
        assert_eq!(release_titles(&c, &format!("{all}&product=agent")).await, ["agent 3", "agent 2", "agent 1"]);
        assert!(c.find_all(Locator::Css("nav.pager")).await.unwrap().is_empty());
        // A bad value in the browser: the styled 400 page.
        c.goto(&format!("{base}/rollouts?status=bogus")).await.unwrap();
        assert!(text_of(&c, "#problems").await.contains("status \"bogus\" is none of active, halted, failed, done"));
        assert_eq!(header_colour(&c).await, "rgb(29, 35, 48)");
        c.close().await.unwrap();
    });
}

/// A release of `product` with a small payload, signed by alice and bob.
fn small_release(dir: &Path, product: &str, version: u32) -> PathBuf {
    let name = format!("{product}-{version}");
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("payload.bin"), crate::fleet::payload(4096, u64::from(version))).unwrap();
    let v = version.to_string();
    let s = src.display().to_string();
    let create = [
        "release",
        "create",
        "--product",
        product,
        "--version",
        &v,
        "--dir",
        &s,
        "--install",
        "sh -c true",
        "--out",
        &name,
    ];
    crate::support::signer(dir, &create).ok();
    for k in ["alice.key", "bob.key"] {
        crate::support::signer(dir, &["release", "sign", "--key", k, &name]).ok();
    }
    dir.join(name)
}

/// The titles ("product version") of the releases `url` lists, in order.
async fn release_titles(c: &Client, url: &str) -> Vec<String> {
    c.goto(url).await.expect("load page");
    texts_of(c, "section.release h2 a").await
}

/// Loads `url` until the releases it lists are `expected` (the collector's reports arrive by
/// gossip).
async fn wait_for_titles(c: &Client, url: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let titles = release_titles(c, url).await;
        if titles == expected {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {expected:?} at {url}; listed {titles:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The text of every element `css` selects, in order.
async fn texts_of(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap_or_default() {
        out.push(e.text().await.expect("text"));
    }
    out
}

/// The page header's computed background: the console's stylesheet applied.
async fn header_colour(c: &Client) -> String {
    let v = c.execute("return getComputedStyle(document.querySelector('header')).backgroundColor", vec![]).await;
    v.expect("computed style").as_str().unwrap_or_default().to_string()
}

/// A wrapper that runs a node with `<dir>/<name>-run` as /run (it asks for a reboot, for two
/// packages) and a dpkg status of three packages (root only: a private mount namespace).
fn fake_run_and_packages(dir: &Path, name: &str) -> Vec<String> {
    let run = dir.join(format!("{name}-run"));
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("reboot-required"), "*** System restart required ***\n").unwrap();
    std::fs::write(run.join("reboot-required.pkgs"), "linux-image-6.1.0-30-amd64\nlibc6\n").unwrap();
    let status = dir.join(format!("{name}.dpkg-status"));
    std::fs::write(
        &status,
        crate::feeds::dpkg_status(&[
            ("zlib1g", "1:1.2.13.dfsg-1", Some("zlib")),
            ("libc6", "2.36-9+deb12u4", Some("glibc")),
            ("openssh-client", "1:9.2p1-2+deb12u2", Some("openssh")),
        ]),
    )
    .unwrap();
    let script = format!(
        "mount --bind {} /run && mount --bind {} /var/lib/dpkg/status && exec {{node}} run --config {{config}}",
        run.display(),
        status.display()
    );
    ["unshare", "--mount", "sh", "-c", &script].map(String::from).to_vec()
}

/// The manifest hash of the first release on the rollouts page (from its link).
async fn release_hash(c: &Client) -> String {
    let link = c.find(Locator::Css("section.release h2 a")).await.unwrap();
    let href = link.attr("href").await.unwrap().unwrap();
    href.trim_start_matches("/release/").to_string()
}

/// The `Set-Cookie` value of a response, without the name.
fn set_cookie(resp: &str) -> String {
    resp.lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .unwrap_or_else(|| panic!("no Set-Cookie in {resp}"))
        .to_string()
}

#[test]
fn the_token_buys_an_expiring_session_that_logout_and_a_rotated_token_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_fleet_keys(dir);
    let mut admin = Node::new(
        dir,
        "admin",
        &dir.join("root.lpr"),
        &[],
        "collector = true\nring = \"admin\"\nconsole_listen = \"127.0.0.1:0\"",
    );
    admin.start();
    let addr = admin.status().console.unwrap();
    let url = console_url(&admin);
    let token = url.rsplit('=').next().unwrap().to_string();
    let path = url.split_once(&addr).unwrap().1.to_string();

    // The cookie is a session, not the token: HttpOnly, SameSite=Strict, with an expiry.
    let login = raw_get(&addr, &path, "");
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = set_cookie(&login);
    assert!(!cookie.contains(&token), "the cookie holds the token: {cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Max-Age=43200"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let with = |s: &str| format!("Cookie: {s}\r\n");
    assert!(raw_get(&addr, "/", &with(&session)).starts_with("HTTP/1.1 200"));
    // Behind a TLS proxy the cookie is Secure.
    let proxied = raw_get(&addr, &path, "X-Forwarded-Proto: https\r\n");
    assert!(set_cookie(&proxied).contains("; Secure"), "{proxied}");

    // Logout ends the session (and tells the browser to drop the cookie).
    let out = raw_get(&addr, "/logout", &with(&session));
    assert!(out.starts_with("HTTP/1.1 200") && set_cookie(&out).contains("Max-Age=0"), "{out}");
    let after = raw_get(&addr, "/", &with(&session));
    assert!(after.starts_with("HTTP/1.1 401") && after.contains("the session expired or ended"), "{after}");

    // A rotated token ends every session and the old token; the new link works.
    let second = set_cookie(&raw_get(&addr, &path, "")).split(';').next().unwrap().to_string();
    assert!(raw_get(&addr, "/", &with(&second)).starts_with("HTTP/1.1 200"));
    let out = Command::new(bin("lanpatch-node"))
        .args(["console-url", "--rotate", "--config"])
        .arg(&admin.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(rotated, url);
    assert!(raw_get(&addr, "/", &with(&second)).starts_with("HTTP/1.1 401"), "a session outlived the token");
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert!(raw_get(&addr, "/", &bearer(&token)).starts_with("HTTP/1.1 401"), "the old token still opens");
    let new_token = rotated.rsplit('=').next().unwrap();
    assert!(raw_get(&addr, "/", &bearer(new_token)).starts_with("HTTP/1.1 200"));
}

#[test]
fn console_ranks_exposures_from_the_feed_database_known_exploited_first_and_filters_by_cve_and_host() {
    use crate::feeds::{data, dpkg_status, import, node_with_packages};
    if !crate::support::is_root() || !Path::new("/var/lib/dpkg/status").exists() {
        return cannot_run("needs root and a Debian machine (a private mount over /var/lib/dpkg/status)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(driver) = start_driver(dir) else { return };
    make_fleet_keys(dir);
    let db = dir.join("feeds.db");
    let d = data();
    let f = |n: &str| d.join(n).display().to_string();
    import(dir, &db, &["--osv", &f("osv"), "--epss", &f("epss.csv"), "--kev", &f("kev.json")]).ok();
    let admin = node_with_packages(
        dir,
        "admin",
        &[],
        &format!(
            "collector = true\nring = \"admin\"\nconsole_listen = \"127.0.0.1:0\"\nconsole_feeds_db = \"{}\"",
            db.display()
        ),
        &dpkg_status(&[("base-files", "12.4+deb12u5", None)]),
    );
    let _k1 = node_with_packages(
        dir,
        "kiosk-1",
        &[admin.port],
        "ring = \"canary\"",
        &dpkg_status(&[
            ("libc6", "2.36-9+deb12u1", Some("glibc")),
            ("openssh-server", "1:9.2p1-2+deb12u2", Some("openssh")),
        ]),
    );
    let _k2 = node_with_packages(
        dir,
        "kiosk-2",
        &[admin.port],
        "ring = \"broad\"",
        &dpkg_status(&[
            ("libc6", "2.36-9+deb12u4", Some("glibc")),
            ("openssh-client", "1:9.2p1-2+deb12u2", Some("openssh")),
        ]),
    );
    let url = console_url(&admin);
    let base = url.split("/login").next().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(&driver, &dir.join("chromium-profile")).await;
        c.goto(&url).await.unwrap();
        let summary =
            wait_for_text(&c, &format!("{base}/exposure"), "#exposure-summary", "three inventories assessed", |t| {
                t == "2 finding(s) on 2 of 3 host(s)."
            })
            .await;
        assert!(!summary.is_empty());
        // Known exploited first: glibc's Looney Tunables, then regreSSHion.
        let first = text_of(&c, "#exposure tbody tr:nth-child(1)").await;
        assert!(
            first.contains("CVE-2023-4911") && first.contains("KEV due 2023-12-12") && first.contains("7.8"),
            "{first}"
        );
        let second = text_of(&c, "#exposure tbody tr:nth-child(2)").await;
        assert!(
            second.contains("CVE-2024-6387") && second.contains("0.401") && second.contains("1:9.2p1-2+deb12u3"),
            "{second}"
        );
        screenshot(&c, "exposure").await;

        // Per CVE: the exposed hosts; per host: its CVEs (links percent-encode their values).
        c.find(Locator::LinkText("CVE-2024-6387")).await.unwrap().click().await.unwrap();
        let hosts = text_of(&c, "#exposed-hosts tbody").await;
        assert!(hosts.contains("kiosk-1") && hosts.contains("kiosk-2"), "{hosts}");
        c.find(Locator::LinkText("kiosk-2")).await.unwrap().click().await.unwrap();
        let one = text_of(&c, "#exposure tbody").await;
        assert!(one.contains("CVE-2024-6387") && !one.contains("CVE-2023-4911"), "{one}");
        assert!(text_of(&c, "#exposed-hosts tbody").await.contains("openssh-client"));

        // A release that says it fixes regreSSHion: per CVE, the hosts it fixed, the hosts
        // still exposed without an outcome, and the hosts where it failed.
        let fix = release(dir, "sshfix", 1, FAILS_ON_KIOSK_2, ROLLBACK, &["--cve", "CVE-2024-6387"]);
        approve(dir, &fix, "canary", &[]).ok();
        admin.publish(&fix);
        let cve_page = format!("{base}/exposure?cve=CVE-2024-6387");
        let row = "#cve-rollout tbody tr[data-cve='CVE-2024-6387']";
        let text = wait_for_text(&c, &cve_page, row, "kiosk-1 fixed, kiosk-2 pending", |t| {
            t.contains("1: kiosk-1") && t.contains("1: kiosk-2")
        })
        .await;
        assert_eq!(text, "CVE-2024-6387 tool 1 1: kiosk-1 1: kiosk-2 0", "fixed, pending, failed");
        let sock = admin.socket().display().to_string();
        approve(dir, &fix, "broad", &["--node", &sock, "--rings", "canary,broad"]).ok();
        admin.publish(&fix);
        let text = wait_for_text(&c, &cve_page, row, "kiosk-2 failed", |t| t.contains("0 1: kiosk-2")).await;
        assert!(text.starts_with("CVE-2024-6387 tool 1 1: kiosk-1 0 1: kiosk-2 (rolled back"), "{text}");
        screenshot(&c, "exposure-rollout").await;
        c.close().await.unwrap();
    });
}

/// Fails on the host named kiosk-2.
const FAILS_ON_KIOSK_2: &str = "[ \"$LANPATCH_HOSTNAME\" != kiosk-2 ]\n";

/// The command in a signer's output line that starts with `prefix` (after its "...: "), or a
/// line the console printed, as an argv: the admin running it fills in only their own key file,
/// a reason, the admin node's socket and where the bundle is (the console cannot know those).
fn as_run(line: &str, key: &str, sock: &Path, bundle: &str) -> Vec<String> {
    let command = match line.split_once(": lanpatch-signer ") {
        Some((_, c)) => format!("lanpatch-signer {c}"),
        None => line.trim().to_string(),
    };
    // A trailing "(...)" is a comment for people, not part of the command.
    let mut command = command.split(" (").next().unwrap().to_string();
    // Each `<...>` placeholder, by what it asks for.
    while let Some(start) = command.find('<') {
        let end = start + command[start..].find('>').unwrap_or_else(|| panic!("unclosed < in {command:?}"));
        let inner = &command[start + 1..end];
        let fill = if inner.contains("key") {
            key.to_string()
        } else if inner.contains("control.sock") {
            sock.display().to_string()
        } else if inner == "why" {
            "breaks the till's printer".to_string()
        } else if inner.starts_with("bundle of ") {
            bundle.to_string()
        } else {
            panic!("a placeholder an admin could not fill: <{inner}> in {command:?}")
        };
        command.replace_range(start..=end, &fill);
    }
    let mut argv = shlex::split(&command).unwrap_or_else(|| panic!("unbalanced quotes in {command:?}"));
    assert_eq!(argv.remove(0), "lanpatch-signer", "{line}");
    argv
}

/// The first line of `out` that starts with `prefix`.
fn printed<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().map(str::trim).find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} in:\n{out}"))
}

/// Runs the signer as an admin would, exit 0 required; returns its output.
fn admin_runs(dir: &Path, argv: &[String]) -> String {
    let r = crate::support::signer(dir, argv);
    r.ok();
    r.stdout
}

#[test]
fn two_admins_run_a_two_of_two_rollout_canary_then_broad_and_a_yank_using_only_commands_the_cli_and_the_console_printed()
 {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(driver) = start_driver(dir) else { return };
    // Alice and Bob: every role needs both of them.
    crate::fleet::make_keys(dir, &["alice", "bob"], 2);
    let admin = crate::fleet::admin(
        dir,
        "hostname = \"admin-ws\"\nconsole_listen = \"127.0.0.1:0\"\nrollout_rings = [\"canary\", \"broad\"]",
    );
    let c1 =
        crate::fleet::endpoint(dir, "c1", &admin, "ring = \"canary\"\nhostname = \"till-1\"\ntags = [\"endpoint\"]");
    let b1 =
        crate::fleet::endpoint(dir, "b1", &admin, "ring = \"broad\"\nhostname = \"office-7\"\ntags = [\"endpoint\"]");
    wait_until(Duration::from_secs(30), "mesh", || admin.status().peers.len() == 2);
    let sock = admin.socket();
    let src = dir.join("tool-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("install.sh"), INSTALL_OK).unwrap();
    std::fs::write(src.join("rollback.sh"), ROLLBACK).unwrap();
    std::fs::write(src.join("payload.bin"), crate::fleet::payload(300_000, 7)).unwrap();

    // Alice packages the release: the one command nobody printed for her.
    let mut out = admin_runs(
        dir,
        &[
            "release",
            "create",
            "--product",
            "tool",
            "--version",
            "1",
            "--dir",
            "tool-src",
            "--install",
            "sh install.sh",
            "--rollback",
            "sh rollback.sh",
            "--target-tag",
            "endpoint",
            "--out",
            "tool-1",
        ]
        .map(String::from),
    );
    // From here on each step is the line the previous one printed.
    out = admin_runs(dir, &as_run(printed(&out, "next: "), "alice.key", &sock, "tool-1"));
    let to_bob = printed(&out, "next, by another release key holder: ");
    assert!(to_bob.ends_with("lanpatch-signer release sign --key bob.key tool-1"), "{to_bob}");
    out = admin_runs(dir, &as_run(to_bob, "", &sock, "tool-1"));
    out = admin_runs(dir, &as_run(printed(&out, "next, by an approve key holder: "), "alice.key", &sock, "tool-1"));
    let to_bob = printed(&out, "next, by another approve key holder: ");
    assert!(to_bob.ends_with("lanpatch-signer approve --key bob.key --ring canary tool-1"), "{to_bob}");
    out = admin_runs(dir, &as_run(to_bob, "", &sock, "tool-1"));
    out = admin_runs(dir, &as_run(printed(&out, "next: lanpatch-signer publish"), "", &sock, "tool-1"));
    assert!(out.contains("published tool 1") && out.contains("approved for: canary"), "{out}");
    wait_until(Duration::from_secs(90), "canary installs", || {
        c1.release_state("tool", 1) == Some(lanpatch_protocol::ReleaseState::Installed)
    });

    let url = console_url(&admin);
    let base = url.split("/login").next().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(&driver, &dir.join("chromium-profile")).await;
        c.goto(&url).await.unwrap();
        // "Waiting for you": the gate for broad passes; one approve line per admin, then publish.
        let pending = format!("{base}/pending?refresh=0");
        let gate = "section.pending[data-release='tool 1'] pre.command";
        wait_for_text(&c, &pending, gate, "the gate for broad", |t| t.contains("--ring broad")).await;
        screenshot(&c, "pending-gate").await;
        let lines = text_of(&c, gate).await;
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        admin_runs(dir, &as_run(lines[0], "alice.key", &sock, "tool-1"));
        admin_runs(dir, &as_run(lines[1], "bob.key", &sock, "tool-1"));
        admin_runs(dir, &as_run(lines[2], "", &sock, "tool-1"));
        wait_until(Duration::from_secs(90), "broad installs", || {
            b1.release_state("tool", 1) == Some(lanpatch_protocol::ReleaseState::Installed)
        });
        wait_for_text(&c, &pending, "#nothing", "nothing waits", |t| t.starts_with("Nothing waits for you")).await;
        let cli = admin_runs(
            dir,
            &["pending", "--node", &sock.display().to_string(), "--rings", "canary,broad"].map(String::from),
        );
        assert!(cli.contains("nothing waits for a signature or a publish"), "{cli}");

        // The yank, from the release page: Alice's line with a reason, Bob's, the publish.
        c.goto(&format!("{base}/rollouts?refresh=0")).await.unwrap();
        let hash = release_hash(&c).await;
        c.goto(&format!("{base}/release/{hash}?refresh=0")).await.unwrap();
        let yank = text_of(&c, "pre.command#yank").await;
        let lines: Vec<&str> = yank.lines().collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        screenshot(&c, "release-yank-lines").await;
        let first = admin_runs(dir, &as_run(lines[0], "alice.key", &sock, "tool-1"));
        assert!(
            first.contains("yank: signed by alice.key (1 of 2): waiting for 1 more approve signature(s)"),
            "{first}"
        );
        admin_runs(dir, &as_run(lines[1], "bob.key", &sock, "tool-1"));
        admin_runs(dir, &as_run(lines[2], "", &sock, "tool-1"));
        wait_until(Duration::from_secs(60), "every node holds the yank", || {
            [&admin, &c1, &b1].iter().all(|n| n.status().releases.iter().any(|r| r.version == 1 && r.yanked))
        });
        wait_for_titles(&c, &format!("{base}/rollouts?refresh=0&status=done"), &["tool 1"]).await;
        assert!(text_of(&c, "section.release h2").await.contains("yanked"));
        c.close().await.unwrap();
    });
    drop((c1, b1));
}
