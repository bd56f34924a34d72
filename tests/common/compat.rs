//! The compat virtualenv's Python (`scripts/compat-setup`, `LGSP_COMPAT_VENV`) and the real
//! third-party programs tests run with it: an SMTP server (aiosmtpd) and an HTML5 parser
//! (html5lib). Without the virtualenv these tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn python() -> PathBuf {
    let venv = std::env::var_os("LGSP_COMPAT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/compat-venv"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} is missing: run scripts/compat-setup (scripts/test does)", py.display());
    py
}

/// aiosmtpd on a free loopback port, storing each message in a Maildir. Killed on drop.
pub struct Smtp {
    child: Child,
    pub port: u16,
    maildir: PathBuf,
}

impl Smtp {
    pub fn start(dir: &Path) -> Smtp {
        let port = super::serve::free_tcp_port();
        let maildir = dir.join("maildir");
        let child = Command::new(python())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtp { child, port, maildir }
    }

    /// Every received message as (recipients, subject, body), decoded by Python's email package.
    pub fn messages(&self) -> Vec<Value> {
        let script = r#"
import json, mailbox, sys, email.header
out = []
for m in mailbox.Maildir(sys.argv[1], create=False):
    subj = str(email.header.make_header(email.header.decode_header(m['subject'] or '')))
    body = m.get_payload(decode=True).decode(m.get_content_charset() or 'utf-8')
    out.append({"to": m['to'], "subject": subj, "body": body, "message_id": m['message-id']})
print(json.dumps(out))
"#;
        if !self.maildir.join("new").exists() {
            return vec![];
        }
        let out = Command::new(python()).args(["-c", script]).arg(&self.maildir).output().expect("read maildir");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("json")
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the HTML file with html5lib in strict mode (any parse error fails the test), binds
/// the tree as `doc` (no namespaces on HTML elements) and prints `json.dumps(EXPR)`: the
/// expression's value.
pub fn html5(file: &Path, expr: &str) -> Value {
    let script = format!(
        "import html5lib, json, sys\n\
         doc = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(open(sys.argv[1], encoding='utf-8').read())\n\
         svg = '{{http://www.w3.org/2000/svg}}'\n\
         print(json.dumps({expr}))"
    );
    let out = Command::new(python()).args(["-c", &script]).arg(file).output().expect("python with html5lib (run scripts/compat-setup)");
    assert!(out.status.success(), "html5lib: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}
