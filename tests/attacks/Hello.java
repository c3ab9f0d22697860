public class Hello {
    public static void main(String[] a) throws Exception {
        Thread t = new Thread(() -> {});
        t.start();
        t.join();
        System.out.println("hello from java " + System.getProperty("user.name"));
    }
}
